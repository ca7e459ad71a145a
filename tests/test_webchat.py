"""Issue 8: the web chat at `/`, end to end in a real headless Chromium.

Debian's `chromium` (/usr/bin/chromium, installed by .ci/run) is driven by Python's Playwright,
which downloads no browser of its own. Without Chromium these tests fail, they never skip.
Each person has their own browser context (own storage); the server is the real app on a real
port. A screenshot of each main view is saved in tests/artifacts/ (gitignored).
"""

import asyncio
import dataclasses
import json
import os
import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from helpers import PASSWORD, UUID4_RE, Sock
from playwright.async_api import async_playwright, expect

from buttonapi import create_app

CHROMIUM = Path(os.environ.get("BUTTONAPI_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]  # headless, and a fresh profile folder for each launch: Playwright adds both
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
STATIC = Path(__file__).resolve().parent.parent / "static"
WAIT_MS = 15_000  # the bound of every wait for something to show up on a page

pytestmark = pytest.mark.timeout(180)
expect.set_options(timeout=WAIT_MS)


# --- the server and the browser ----------------------------------------------------------


class LiveServer:
    """The real app on 127.0.0.1; it can stop and start again on the same port."""

    def __init__(self, config):
        self.config = config
        self.port = 0
        self.runner = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    async def start(self):
        # A short shutdown_timeout: while aiohttp shuts down it ignores what clients send, so a
        # browser's WebSocket close is never read and each stop would wait for the timeout, twice.
        self.runner = web.AppRunner(await create_app(self.config), shutdown_timeout=1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self):
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def serve(config):
    """serve(**config changes) -> a started LiveServer on the test's database; all stopped."""
    servers = []

    async def make(**changes):
        server = await LiveServer(dataclasses.replace(config, **changes)).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


@pytest.fixture
async def server(serve):
    return await serve(send_limit="0")


@pytest.fixture
def chromium():
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)"
    ARTIFACTS.mkdir(exist_ok=True)
    return CHROMIUM


@pytest.fixture
async def browser(chromium):
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


class Person:
    """Someone using the web chat in their own browser context, as a person would."""

    def __init__(self, page, server, name):
        self.page = page
        self.server = server
        self.name = name
        self.problems = []  # uncaught page errors and dialogs: there must be none
        self.urls = []  # every request and WebSocket the page opened
        self.texts = page.locator("#message-list .text")
        self.alert = page.locator("#alert-text")
        self.connection = page.locator("#connection")

    @classmethod
    async def open(cls, browser, server, name, **context_options):
        context = await browser.new_context(**context_options)
        page = await context.new_page()
        person = cls(page, server, name)
        page.on("pageerror", lambda error: person.problems.append(f"page error: {error}"))
        page.on("dialog", lambda dialog: person.problems.append(f"dialog: {dialog.message}"))
        page.on("request", lambda request: person.urls.append(request.url))
        page.on("websocket", lambda ws: person.urls.append(ws.url))
        await page.goto(server.url + "/")
        await page.evaluate("window.sameDocument = true")  # gone if the page ever reloads
        return person

    async def register(self, password=PASSWORD):
        form = self.page.locator("#register-form")
        await form.get_by_label("Username").fill(self.name)
        await form.get_by_label("Password").fill(password)
        await form.get_by_role("button", name="Create account").click()

    async def log_in(self, password=PASSWORD):
        form = self.page.locator("#login-form")
        await form.get_by_label("Username").fill(self.name)
        await form.get_by_label("Password").fill(password)
        await form.get_by_label("Password").press("Enter")

    async def expect_live(self):
        await expect(self.page.locator("#chat-screen")).to_be_visible()
        await expect(self.connection).to_have_text("Live")

    def conversation(self, name):
        return self.page.locator("#sidebar").get_by_role("button", name=name)

    async def open_conversation(self, name):
        await self.conversation(name).click()
        await expect(self.page.locator("#messages")).to_have_attribute("aria-busy", "false")

    async def send(self, text):
        box = self.page.get_by_label("Message", exact=True)
        await box.fill(text)
        await box.press("Enter")
        await expect(self.texts.last).to_have_text(text)
        await expect(box).to_have_value("")

    async def submit(self, form_id, label, value):
        form = self.page.locator(f"#{form_id}")
        await form.get_by_label(label).fill(value)
        await form.get_by_label(label).press("Enter")

    def message(self, text):
        return self.page.locator("#message-list li").filter(
            has=self.page.locator(".text", has_text=re.compile(f"^{re.escape(text)}$"))
        )

    async def screenshot(self, name):
        await self.page.screenshot(path=ARTIFACTS / f"webchat-{name}.png")

    async def token(self):
        stored = await self.page.evaluate("localStorage.getItem('buttonapi.session')")
        return json.loads(stored)["token"] if stored else None

    async def check_clean(self):
        """No reload, no error, no dialog; only this server was asked; the token in no URL."""
        assert await self.page.evaluate("window.sameDocument") is True
        assert self.problems == []
        origin = self.server.url.removeprefix("http://")
        assert all(re.match(f"(http|ws)://{re.escape(origin)}/", url) for url in self.urls)
        token = await self.token()
        assert token and UUID4_RE.fullmatch(token)
        assert not [url for url in self.urls if token in url]


async def api(server, name, body):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/api/v3/{name}/", json=body) as resp:
            answer = await resp.json()
            assert resp.status in (200, 201), (name, body, resp.status, answer)
            return answer


async def api_user(server, name):
    """Register `name` through the HTTP API; their token."""
    await api(server, "register", {"username": name, "password": PASSWORD})
    made = await api(server, "generatetoken", {"username": name, "password": PASSWORD})
    return made["token"]


async def tab_to(page, selector, key="Tab", limit=60):
    """Press `key` until the focus is on `selector`; that control shows its focus."""
    for _ in range(limit):
        if await page.evaluate("s => document.activeElement.matches(s)", selector):
            outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
            assert outline != "none", f"{selector} has no visible focus"
            return
        await page.keyboard.press(key)
    raise AssertionError(f"{selector} is not reached with {key}")


# --- the page and its files ----------------------------------------------------------------


async def test_the_page_and_its_files_come_from_this_server(client):
    async with client.get("/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        policy = resp.headers["Content-Security-Policy"]
        page = await resp.text()
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert '<script type="module" src="/static/app.js"></script>' in page
    for name, content_type in [("app.js", "javascript"), ("style.css", "text/css")]:
        async with client.get(f"/static/{name}") as resp:
            assert resp.status == 200
            assert content_type in resp.content_type
    for path in ["/static/nope.js", "/static/", "/static/..%2Fbuttonapi.py", "/index.htm"]:
        async with client.get(path) as resp:
            assert (resp.status, await resp.json()) == (404, {"message": "Not found!"}), path
    async with client.post("/") as resp:
        assert (resp.status, await resp.json()) == (405, {"message": "Method not allowed!"})
    for name in ["index.html", "app.js", "style.css"]:  # nothing fetched from another host
        assert not re.search(r"https?://|[\"'(]//\w", (STATIC / name).read_text()), name


# --- chatting ------------------------------------------------------------------------------


async def test_two_people_chat_live_in_public_in_a_channel_and_by_dm(server, browser):
    alice = await Person.open(browser, server, "alice", viewport={"width": 1100, "height": 720})
    bob = await Person.open(browser, server, "bob", viewport={"width": 1100, "height": 720})
    await expect(alice.page.get_by_role("heading", name="Log in")).to_be_visible()
    await alice.screenshot("login")
    await alice.register()
    await bob.register()
    await alice.expect_live()
    await bob.expect_live()

    # the public feed, live both ways
    await alice.send("Hello everyone!")
    await expect(bob.texts).to_have_text(["Hello everyone!"])
    await bob.send("Hi alice :)")
    await expect(alice.texts).to_have_text(["Hello everyone!", "Hi alice :)"])
    await bob.screenshot("public")

    # a channel: alice makes it and adds bob, who is told and sees it in his list at once
    await alice.submit("channel-form", "New channel", "general")
    await expect(alice.page.locator("#view-title")).to_have_text("# general")
    await alice.submit("add-user-form", "Add a user to this channel", "bob")
    await expect(alice.page.locator("#notice-text")).to_have_text("Added bob to general.")
    await expect(bob.page.locator("#notice-text")).to_have_text(
        "alice added you to the channel general."
    )
    await bob.open_conversation("# general")
    await alice.send("Welcome to #general, bob")
    await expect(bob.texts).to_have_text(["Welcome to #general, bob"])
    await bob.send("Thanks!\nGlad to be here.")
    await expect(alice.texts).to_have_text(
        ["Welcome to #general, bob", "Thanks!\nGlad to be here."]
    )

    # text from users is text: markup shows as written and runs nothing
    markup = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script><b>bold?</b>'
    await bob.send(markup)
    await expect(alice.texts.last).to_have_text(markup)
    assert await alice.page.locator("#message-list img, #message-list script, .text b").count() == 0
    assert await alice.page.evaluate("window.pwned") is None

    # deleting one's own message removes it for everyone, live; others' have no Delete
    await alice.send("oops, wrong channel")
    await expect(bob.texts.last).to_have_text("oops, wrong channel")
    await expect(bob.message("oops, wrong channel").get_by_role("button")).to_have_count(0)
    await alice.message("oops, wrong channel").get_by_role("button", name="Delete").click()
    await expect(alice.message("oops, wrong channel")).to_have_count(0)
    await expect(bob.message("oops, wrong channel")).to_have_count(0)
    await expect(bob.texts).to_have_count(3)
    await alice.screenshot("channel")

    # DMs per conversation: bob opens one; alice, elsewhere, sees it marked new, then replies
    await bob.submit("dm-form", "Message a user", "alice")
    await expect(bob.page.locator("#view-title")).to_have_text("Direct messages with alice")
    await bob.send("psst, a secret")
    await expect(alice.conversation("bob")).to_have_class(re.compile(r"\bunread\b"))
    await expect(alice.texts).to_have_count(3)  # still in #general, untouched
    await alice.open_conversation("bob")
    await expect(alice.texts).to_have_text(["psst, a secret"])
    await alice.send("tell me more")
    await expect(bob.texts).to_have_text(["psst, a secret", "tell me more"])
    await bob.send("later, over coffee")
    await expect(alice.texts).to_have_text(["psst, a secret", "tell me more", "later, over coffee"])
    await alice.screenshot("dm")
    await bob.open_conversation("# general")
    await bob.screenshot("channel-bob")

    for person in (alice, bob):
        await person.check_clean()

    # log out: back to the login form, the token gone from storage, also after a reload
    await alice.page.get_by_role("button", name="Log out").click()
    await expect(alice.page.get_by_role("heading", name="Log in")).to_be_visible()
    assert await alice.token() is None
    await alice.page.reload()
    await expect(alice.page.get_by_role("heading", name="Log in")).to_be_visible()
    # logging in again gets the same token (bob is not disturbed) and the lists come back
    await alice.log_in()
    await alice.expect_live()
    await expect(alice.conversation("# general")).to_be_visible()
    await expect(alice.conversation("bob")).to_be_visible()
    await bob.send("still here")
    await alice.open_conversation("# general")
    await expect(alice.texts.last).to_have_text("still here")
    # a reload keeps the session: the token is kept in the browser's storage
    await bob.page.reload()
    await bob.expect_live()


async def test_it_reconnects_after_a_restart_and_catches_up(server, serve, browser):
    await api_user(server, "alice")
    bob_token = await api_user(server, "bob")
    await api(server, "makechannel", {"token": bob_token, "name": "general"})
    await api(
        server, "addusertochannel", {"token": bob_token, "name": "general", "username": "alice"}
    )
    alice = await Person.open(browser, server, "alice")
    bob = await Person.open(browser, server, "bob")
    for person in (alice, bob):
        await person.log_in()
        await person.expect_live()
        await person.open_conversation("# general")
    await bob.send("before the restart")
    await expect(alice.texts).to_have_text(["before the restart"])

    await server.stop()
    await expect(alice.connection).to_have_text("Reconnecting…")
    # what cannot be sent says so in words, and the text stays in the box
    box = alice.page.get_by_label("Message", exact=True)
    await box.fill("anyone there?")
    await box.press("Enter")
    await expect(alice.alert).to_have_text(
        "Cannot reach the server. Check your connection and try again."
    )
    await expect(box).to_have_value("anyone there?")

    # meanwhile bob writes through another server on the same database: alice misses it live
    other = await serve(send_limit="0")
    body = {"token": bob_token, "channel": "general", "message": "sent while you were away"}
    await api(other, "sendmessage", body)
    await api(other, "senddm", {"token": bob_token, "username": "alice", "message": "a missed DM"})
    await other.stop()

    await server.start()  # the same port again
    await alice.expect_live()
    await expect(alice.texts).to_have_text(["before the restart", "sent while you were away"])
    await expect(alice.conversation("bob")).to_have_class(re.compile(r"\bunread\b"))
    await expect(alice.alert).to_be_hidden()  # the server is reachable again
    await alice.screenshot("reconnected")
    await bob.expect_live()
    await box.press("Enter")  # the kept text is sent now
    await expect(bob.texts.last).to_have_text("anyone there?")
    await bob.send("welcome back")
    await expect(alice.texts.last).to_have_text("welcome back")
    await alice.open_conversation("bob")
    await expect(alice.texts).to_have_text(["a missed DM"])
    await alice.check_clean()


async def test_every_error_is_shown_in_words_and_slow_work_shows_progress(serve, browser):
    server = await serve(send_limit="2/60")
    alice = await Person.open(browser, server, "alice")
    expected = [
        ("short", "Password needs to have 8-20 chars minimum one number minimum one capital"
         " letter minimum one special symbol no empty symbols!"),
        (PASSWORD, None),
        (PASSWORD, "User exists!"),
    ]  # fmt: skip
    alice.name = "al"
    await alice.register()
    await expect(alice.alert).to_have_text("Username needs to be 3-20 chars long!")
    alice.name = "alice"
    for password, error in expected:
        await alice.register(password)
        if error is None:
            await alice.expect_live()
            await alice.page.get_by_role("button", name="Log out").click()
        else:
            await expect(alice.alert).to_have_text(error)
    await alice.log_in("Wrong1pass!")
    await expect(alice.alert).to_have_text("Invalid username or password!")

    # a slow login shows that it is working, and its button cannot be pressed twice
    release = asyncio.Event()

    async def held(route):
        await release.wait()
        await route.continue_()

    await alice.page.route("**/api/v3/gettoken/", held)
    await alice.log_in()
    await expect(alice.page.locator("#working")).to_be_visible()
    await expect(alice.page.locator("#login-form")).to_have_attribute("aria-busy", "true")
    await expect(alice.page.get_by_role("button", name="Log in")).to_be_disabled()
    await alice.screenshot("working")
    release.set()
    await alice.expect_live()
    await expect(alice.page.locator("#working")).to_be_hidden()
    await alice.page.unroute("**/api/v3/gettoken/")

    # the chat's own actions
    await alice.submit("channel-form", "New channel", "general")
    await expect(alice.page.locator("#view-title")).to_have_text("# general")
    steps = [
        ("channel-form", "New channel", "General", "Channel exists!"),
        ("channel-form", "New channel", " spaced ", "Channel name needs to be 1-100 chars long!"),
        ("add-user-form", "Add a user to this channel", "nobody", "User not found!"),
        ("dm-form", "Message a user", "nobody", "User not found!"),
    ]
    for form, label, value, error in steps:
        await alice.submit(form, label, value)
        await expect(alice.alert).to_have_text(error)
        await alice.page.get_by_role("button", name="Dismiss").click()
        await expect(alice.alert).to_be_hidden()
    await alice.send("one")
    await alice.send("two")
    box = alice.page.get_by_label("Message", exact=True)
    await box.fill("   ")
    await box.press("Enter")
    await expect(alice.alert).to_have_text("Message needs to be 1-2000 chars long!")
    await box.fill("three")
    await box.press("Enter")
    await expect(alice.alert).to_have_text(
        re.compile(r"^You are sending messages too fast! Try again in \d+ s\.$")
    )
    await expect(box).to_have_value("three")
    await alice.screenshot("error")

    # a token that stops working (changed by another client) ends the session, in words
    await api(server, "generatetoken", {"username": "alice", "password": PASSWORD})
    await expect(alice.alert).to_contain_text("Token changed!")
    await expect(alice.page.get_by_role("heading", name="Log in")).to_be_visible()
    assert await alice.token() is None
    assert alice.problems == []


async def test_history_pages_backwards(server, browser):
    alice_token = await api_user(server, "alice")
    bob_token = await api_user(server, "bob")
    for n in range(1, 121):
        await api(server, "senddcmsgwithtoken", {"token": alice_token, "message": f"public {n}"})
    for n in range(1, 56):
        await api(server, "senddm", {"token": bob_token, "username": "alice", "message": f"dm {n}"})
    alice = await Person.open(browser, server, "alice")
    await alice.log_in()
    await alice.expect_live()
    older = alice.page.get_by_role("button", name="Load older messages")
    for first in (71, 21, 1):  # 50 a page, the newest first
        await expect(alice.texts).to_have_text([f"public {n}" for n in range(first, 121)])
        if first > 1:
            await older.click()
    await expect(older).to_be_hidden()
    await alice.open_conversation("bob")
    await expect(alice.texts).to_have_text([f"dm {n}" for n in range(6, 56)])
    await older.click()
    await expect(alice.texts).to_have_text([f"dm {n}" for n in range(1, 56)])
    await expect(older).to_be_hidden()
    await alice.check_clean()


async def test_a_phone_sized_screen_with_the_keyboard_alone(server, browser):
    await api_user(server, "bob")
    phone = {"viewport": {"width": 390, "height": 760}, "is_mobile": True, "has_touch": True}
    alice = await Person.open(browser, server, "alice", **phone)
    page = alice.page
    keys = page.keyboard
    await tab_to(page, "#register-username")
    await keys.type("alice")
    await keys.press("Tab")
    await keys.type(PASSWORD)
    await keys.press("Enter")
    await alice.expect_live()
    assert await page.evaluate("document.activeElement.id") == "compose-text"
    await expect(page.locator("#sidebar")).to_be_hidden()  # folded away behind the menu
    assert await page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    await keys.type("hello from my phone")
    await keys.press("Enter")
    await expect(alice.texts).to_have_text(["hello from my phone"])

    await tab_to(page, "#menu-button", key="Shift+Tab")
    await keys.press("Enter")
    await expect(page.locator("#sidebar")).to_be_visible()
    await expect(page.locator("#menu-button")).to_have_attribute("aria-expanded", "true")
    await alice.screenshot("phone-menu")
    await keys.press("Escape")
    await expect(page.locator("#sidebar")).to_be_hidden()
    await keys.press("Enter")  # the focus went back to the menu button
    await tab_to(page, "#channel-name")
    await keys.type("phones")
    await keys.press("Enter")
    await expect(page.locator("#view-title")).to_have_text("# phones")
    await expect(page.locator("#sidebar")).to_be_hidden()
    await tab_to(page, "#add-username", key="Shift+Tab")
    await keys.type("bob")
    await keys.press("Enter")
    await expect(page.locator("#notice-text")).to_have_text("Added bob to phones.")
    await tab_to(page, "#compose-text")
    for text in ("first line", "typo"):
        await keys.type(text)
        await keys.press("Enter")
        await expect(alice.texts.last).to_have_text(text)
    await tab_to(page, "#message-list li:last-child .delete", key="Shift+Tab")
    await keys.press("Enter")
    await expect(alice.texts).to_have_text(["first line"])
    assert await page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    await alice.screenshot("phone")
    await tab_to(page, "#menu-button", key="Shift+Tab")
    await keys.press("Enter")
    await tab_to(page, "#public-button")
    await keys.press("Enter")  # choosing a conversation folds the menu and moves the focus
    await expect(page.locator("#view-title")).to_have_text("Public feed")
    await expect(page.locator("#view-title")).to_be_focused()
    await expect(alice.texts).to_have_text(["hello from my phone"])
    await alice.check_clean()


# --- running a community: moderation from a message, the community page ------------------------


async def make_role(server, username, role):
    """As the command line does it (`admin setrole`), on the running server's database."""
    import db
    from buttonapi import db_key
    from permissions import Role

    result = await db.set_role(server.runner.app[db_key], None, "(console)", username, Role(role))
    assert "error" not in result


async def test_a_moderator_moderates_from_the_message_and_an_admin_runs_the_community(
    server, browser
):
    await api_user(server, "root")
    await api_user(server, "mod")
    alice_token = await api_user(server, "alice")
    spam_token = await api_user(server, "spammer")
    await make_role(server, "root", "admin")
    await make_role(server, "mod", "moderator")
    made = await api(server, "makechannel", {"token": alice_token, "name": "team"})
    assert made["channel_name"] == "team"
    await api(server, "addusertochannel", {"token": alice_token, "name": "team", "username": "mod"})
    await api(
        server, "sendmessage", {"token": alice_token, "message": "team news", "channel": "team"}
    )
    await api(server, "senddcmsgwithtoken", {"token": spam_token, "message": "BUY NOW"})

    spammer = await Person.open(browser, server, "spammer")
    await spammer.log_in()
    await spammer.expect_live()
    alice = await Person.open(browser, server, "alice")
    await alice.log_in()
    await alice.expect_live()
    await expect(alice.texts).to_have_text(["BUY NOW"])
    await expect(alice.message("BUY NOW").get_by_role("button")).to_have_count(0)  # a member
    await expect(alice.page.get_by_role("button", name="Community")).to_be_hidden()

    mod = await Person.open(browser, server, "mod", viewport={"width": 1100, "height": 760})
    await mod.log_in()
    await mod.expect_live()
    await expect(mod.page.locator("#my-role")).to_have_text("(moderator)")
    await expect(mod.message("BUY NOW").get_by_role("button", name="Delete")).to_be_visible()
    await mod.open_conversation("# team")
    await expect(mod.message("team news").get_by_role("button", name="Delete")).to_be_visible()
    await mod.open_conversation("Public feed")

    # a timeout from the message: the spammer's sends are refused, with the time it ends
    await mod.message("BUY NOW").get_by_role("button", name="Time out spammer").click()
    form = mod.page.get_by_role("form", name="Time out spammer")
    await form.get_by_label("Time out for").select_option("600")
    await form.get_by_role("button", name="Time out spammer").click()
    await expect(mod.page.locator("#notice-text")).to_have_text(
        re.compile(r"^spammer is timed out until .+\.$")
    )
    await expect(form).to_have_count(0)
    box = spammer.page.get_by_label("Message", exact=True)
    await box.fill("more spam")
    await box.press("Enter")
    await expect(spammer.alert).to_have_text(re.compile(r"^You are timed out! Until .+\.$"))

    # a ban with a purge from the message: the message goes for everyone, the spammer is out
    await mod.message("BUY NOW").get_by_role("button", name="Ban spammer").click()
    form = mod.page.get_by_role("form", name="Ban spammer")
    await form.get_by_label("Reason").fill("selling things")
    await form.get_by_label("Ban for").select_option("86400")
    await form.get_by_label("Also delete their messages of the last 7 days").check()
    await mod.screenshot("ban-form")
    await form.get_by_role("button", name="Ban spammer").click()
    await expect(mod.page.locator("#notice-text")).to_have_text(
        re.compile(r"^spammer is banned until .+\.$")
    )
    await expect(mod.message("BUY NOW")).to_have_count(0)
    await expect(alice.message("BUY NOW")).to_have_count(0)
    await expect(spammer.alert).to_have_text(
        "You have been banned from this community (You are banned!)."
    )
    await expect(spammer.page.get_by_role("heading", name="Log in")).to_be_visible()
    await spammer.log_in()
    await expect(spammer.alert).to_have_text(
        re.compile(r"^You are banned! Reason: selling things\. Until .+\.$")
    )

    # the community page of an admin: users with role and status, roles, invites, links, log
    root = await Person.open(browser, server, "root", viewport={"width": 1100, "height": 900})
    await root.log_in()
    await root.expect_live()
    await root.page.get_by_role("button", name="Community").click()
    await expect(root.page.locator("#view-title")).to_have_text("Community")
    rows = root.page.locator("#user-rows tr")
    await expect(rows).to_have_count(4)
    spam_row = root.page.locator('#user-rows tr[data-username="spammer"]')
    await expect(spam_row).to_contain_text(re.compile(r"banned until .+ \(selling things\)"))
    await expect(root.page.locator('#user-rows tr[data-username="root"]')).to_contain_text("admin")
    await root.page.get_by_label("Role of alice").select_option("moderator")
    await expect(root.page.locator("#notice-text")).to_have_text("alice is now moderator.")
    await root.page.get_by_role("button", name="Create invite").click()
    await expect(root.page.locator("#invite-code")).to_have_text(re.compile(r"^[\w-]{32,}$"))
    await expect(root.page.locator("#links-empty")).to_be_visible()
    await root.page.get_by_label("Channel", exact=True).fill("team")
    await root.page.get_by_label("Discord channel (name or id)").fill("general")
    await root.page.get_by_role("button", name="Link").click()
    await expect(root.alert).to_have_text("Discord bot is not connected!")  # no bot here
    actions = root.page.locator("#audit-rows tr td:nth-child(3)")
    await expect(actions).to_have_text(
        ["createinvite", "setrole", "banuser", "timeoutuser", "setrole", "setrole"]
    )
    await root.screenshot("community")
    await expect(root.page.locator("#audit-rows tr").first).to_contain_text("root")
    assert (await api(server, "getme", {"token": alice_token}))["role"] == "moderator"

    # the moderator sees the page too, without what only admins may do
    await mod.page.get_by_role("button", name="Community").click()
    await expect(mod.page.locator("#user-rows tr")).to_have_count(4)
    await expect(mod.page.get_by_label("Role of alice")).to_have_count(0)
    await expect(mod.page.locator("#link-form")).to_be_hidden()
    await mod.page.get_by_role("button", name="Public feed").click()
    await expect(mod.page.locator("#compose-form")).to_be_visible()
    for person in (alice, mod, root):
        assert person.problems == []


# --- accessibility: axe-core on every view, at two sizes, in both colour schemes -----------

AXE = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"
SIZES = {
    "desktop": {"viewport": {"width": 1100, "height": 720}},
    "phone": {"viewport": {"width": 390, "height": 760}, "is_mobile": True, "has_touch": True},
}


async def audit(person, view):
    """axe-core's WCAG 2.1 A/AA rules on the page as it is now: no serious or critical
    violation, each reported with its rule, its elements and the help text."""
    if not await person.page.evaluate("typeof window.axe === 'object'"):
        await person.page.add_script_tag(path=str(AXE))  # the page's CSP is bypassed (context)
    found = await person.page.evaluate(
        """async () => (await axe.run(document, {runOnly: {type: "tag",
            values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]}}))
            .violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                   nodes: v.nodes.map(n => n.target.join(" ")).slice(0, 5)}))"""
    )
    bad = [v for v in found if v["impact"] in ("serious", "critical")]
    assert bad == [], f"{view}: " + "; ".join(
        f"{v['id']} ({v['impact']}): {v['help']} at {v['nodes']}" for v in bad
    )


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
async def test_every_view_passes_the_accessibility_audit(server, browser, size, scheme):
    assert AXE.is_file(), "axe-core is missing: npm ci --prefix tests"
    options = {**SIZES[size], "color_scheme": scheme, "bypass_csp": True}
    bob_token = await api_user(server, "bob")
    for n in range(60):  # a long conversation
        await api(server, "senddcmsgwithtoken", {"token": bob_token, "message": f"line {n} " * 9})
    await api_user(server, "alice")
    await make_role(server, "alice", "admin")  # so that every view is there to audit
    alice = await Person.open(browser, server, "alice", **options)
    await audit(alice, "login")
    alice.name = "al"
    await alice.register()
    await expect(alice.alert).to_have_text("Username needs to be 3-20 chars long!")
    await audit(alice, "login with an error")
    alice.name = "alice"
    await alice.log_in()
    await alice.expect_live()
    ground = await alice.page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
    assert ground == {"light": "rgb(243, 244, 247)", "dark": "rgb(18, 22, 29)"}[scheme]
    await audit(alice, "public feed")
    menu = alice.page.get_by_role("button", name="Menu")
    if size == "phone":
        await menu.click()
        await audit(alice, "menu open")
    await alice.submit("channel-form", "New channel", "general")
    await expect(alice.page.locator("#view-title")).to_have_text("# general")
    await alice.send("hello channel")
    await audit(alice, "a channel")
    await alice.message("hello channel").get_by_role("button", name="Edit").click()
    await audit(alice, "editing a message")
    await alice.page.get_by_label("Edited message").press("Escape")
    await alice.page.get_by_role("button", name="Members").click()
    await expect(alice.page.locator("#member-list li")).to_have_count(1)
    await audit(alice, "the member list")
    await alice.submit("add-user-form", "Add a user to this channel", "nobody")
    await expect(alice.alert).to_have_text("User not found!")
    await audit(alice, "a channel with an error")
    await alice.page.get_by_role("button", name="Dismiss").click()
    await api(server, "senddm", {"token": bob_token, "username": "alice", "message": "psst"})
    if size == "phone":
        await menu.click()
    dm = alice.page.locator("#sidebar").get_by_role("button", name="bob")
    await expect(dm.locator(".badge")).to_have_text("1")
    await audit(alice, "an unread badge")
    await alice.open_conversation("bob")
    await audit(alice, "a DM")
    if size == "phone":
        await menu.click()
    await alice.submit("search-form", "Search messages", "line*")
    await expect(alice.page.locator("#search-summary")).to_contain_text("found")
    await audit(alice, "search results")
    await alice.page.locator("#search-list").get_by_role("button").first.click()
    await expect(alice.page.locator("#view-title")).to_have_text("Public feed")
    await alice.screenshot(f"audit-{size}-{scheme}")
    await alice.page.get_by_role("button", name="Ban bob").last.click()
    await expect(alice.page.get_by_role("form", name="Ban bob")).to_be_visible()
    await audit(alice, "the ban form on a message")
    if size == "phone":
        await menu.click()
    await alice.page.get_by_role("button", name="Community").click()
    await expect(alice.page.locator("#user-rows tr")).to_have_count(2)
    await audit(alice, "the community page")
    assert alice.problems == []


async def test_new_messages_and_errors_are_announced_without_moving_the_focus(server, browser):
    bob_token = await api_user(server, "bob")
    alice = await Person.open(browser, server, "alice", **SIZES["desktop"])
    await alice.register()
    await alice.expect_live()
    box = alice.page.get_by_label("Message", exact=True)
    await box.focus()
    await api(server, "senddcmsgwithtoken", {"token": bob_token, "message": "hello from bob"})
    announcer = alice.page.locator("#announcer")
    await expect(announcer).to_have_attribute("aria-live", "polite")
    await expect(announcer).to_have_text("bob: hello from bob")
    await expect(box).to_be_focused()
    await box.fill("   ")
    await box.press("Enter")
    alert = alice.page.locator("#alert")
    await expect(alert).to_have_attribute("role", "alert")  # assertive, for errors only
    await expect(alice.alert).to_have_text("Message needs to be 1-2000 chars long!")
    await expect(box).to_be_focused()
    await alice.page.get_by_role("button", name="Dismiss").click()
    # typing: bob's socket types to alice while her DM with him is open
    await api(server, "senddm", {"token": bob_token, "username": "alice", "message": "hi"})
    await alice.open_conversation("bob")
    await box.focus()
    bob = Sock(server.url + "/")
    await bob.connect({"token_api_v3": bob_token})
    await bob.next("ready")
    typing = alice.page.locator("#typing")
    await expect(typing).to_have_attribute("aria-live", "polite")
    await bob.client.emit("typing", {"username": "alice"})
    await expect(typing).to_have_text("bob is typing…")
    await expect(box).to_be_focused()
    await bob.close()


# --- conversations: search, unread counts, presence, typing, edits, members (SPEC 10) ------


async def test_unread_counts_presence_typing_search_edits_and_members(server, browser):
    """alice, away, comes back in two tabs: what is unread where (the same in both tabs), who
    is online and typing, last week's message found by a word; then she edits, lists and
    removes members, and leaves a channel, all in the page."""
    alice_token, bob_token = await api_user(server, "alice"), await api_user(server, "bob")
    await api(server, "makechannel", {"token": alice_token, "name": "general"})
    body = {"token": alice_token, "name": "general", "username": "bob"}
    await api(server, "addusertochannel", body)
    weather = {"token": bob_token, "channel": "general", "message": "last week's weather report"}
    old = await api(server, "sendmessage", weather)
    await api(server, "senddm", {"token": bob_token, "username": "alice", "message": "psst"})
    for text in ("one", "two"):
        await api(
            server, "sendmessage", {"token": bob_token, "channel": "general", "message": text}
        )

    size = {"viewport": {"width": 1100, "height": 720}}
    alice = await Person.open(browser, server, "alice", **size)
    await alice.log_in()
    await alice.expect_live()
    second = await alice.page.context.new_page()  # a second tab: the same stored session
    await second.goto(server.url + "/")
    tabs = [alice.page, second]
    for tab in tabs:  # unread counts, from the server
        general = tab.locator("#sidebar").get_by_role("button", name="# general")
        await expect(general.locator(".badge")).to_have_text("3")
        dm = tab.locator("#sidebar").get_by_role("button", name="bob")
        await expect(dm.locator(".badge")).to_have_text("1")
        await expect(dm.locator(".dot")).to_have_attribute("aria-label", "offline")

    bob = await Person.open(browser, server, "bob", **size)
    await bob.log_in()
    await bob.expect_live()
    for tab in tabs:  # bob came: his dot turns on, live
        dm = tab.locator("#sidebar").get_by_role("button", name="bob")
        await expect(dm.locator(".dot")).to_have_attribute("aria-label", "online")

    # reading in one tab clears the count in both
    await alice.open_conversation("# general")
    for tab in tabs:
        general = tab.locator("#sidebar").get_by_role("button", name="# general")
        await expect(general.locator(".badge")).to_have_count(0)
    await api(server, "sendmessage", {"token": bob_token, "channel": "general", "message": "new"})
    await expect(alice.texts.last).to_have_text("new")
    general2 = second.locator("#sidebar").get_by_role("button", name="# general")
    await expect(general2.locator(".badge")).to_have_count(0)  # read in the first tab
    await alice.screenshot("conversations-unread")

    # bob types in #general: alice sees it, under the messages
    await bob.open_conversation("# general")
    await bob.page.get_by_label("Message", exact=True).fill("I am writ")
    await expect(alice.page.locator("#typing")).to_have_text("bob is typing…")
    await bob.page.get_by_label("Message", exact=True).fill("")

    # search: last week's message, found by a word, opens its conversation
    await alice.open_conversation("bob")
    await alice.submit("search-form", "Search messages", "weath*")
    await expect(alice.page.locator("#search-summary")).to_have_text("1 message found.")
    await alice.page.locator("#search-list").get_by_role("button").click()
    await expect(alice.page.locator("#view-title")).to_have_text("# general")
    await expect(alice.page.locator(f'#message-list li[data-id="{old["id"]}"]')).to_have_class(
        re.compile(r"\bfound\b")
    )

    # editing her own message: the new text and an "edited" mark, for bob too
    await alice.send("helo all")
    await alice.message("helo all").get_by_role("button", name="Edit").click()
    await alice.page.get_by_label("Edited message").fill("hello all")
    await alice.page.get_by_label("Edited message").press("Enter")
    for person in (alice, bob):
        item = person.message("hello all")
        await expect(item.locator(".edited")).to_have_text("(edited)")
    await expect(bob.message("helo all")).to_have_count(0)

    # members, with a dot each; the creator removes bob, who is told and moved out
    await alice.page.get_by_role("button", name="Members").click()
    members = alice.page.locator("#member-list li")
    await expect(members).to_have_count(2)
    await expect(members.locator(".dot.on")).to_have_count(2)
    await alice.screenshot("conversations-members")
    await bob.page.get_by_role("button", name="Members").click()  # not the creator: no Remove
    await expect(bob.page.locator("#member-list li")).to_have_count(2)
    await expect(bob.page.locator("#member-list").get_by_role("button")).to_have_count(0)
    await alice.page.get_by_role("button", name="Remove bob from general").click()
    await expect(alice.page.locator("#notice-text")).to_have_text("Removed bob from general.")
    await expect(bob.page.locator("#notice-text")).to_have_text(
        "alice removed you from the channel general."
    )
    await expect(bob.page.locator("#view-title")).to_have_text("Public feed")
    await expect(bob.page.locator("#channel-list li")).to_have_count(0)

    # leaving: the channel goes from her list (and from the other tab's at the next load)
    await alice.page.get_by_role("button", name="Leave channel").click()
    await expect(alice.page.locator("#notice-text")).to_have_text("You left general.")
    await expect(alice.page.locator("#channel-list li")).to_have_count(0)
    await expect(alice.page.locator("#view-title")).to_have_text("Public feed")
    for person in (alice, bob):
        await person.check_clean()


async def test_the_conversation_tools_fit_a_phone_sized_screen(server, browser):
    token = await api_user(server, "bob")
    await api(server, "senddcmsgwithtoken", {"token": token, "message": "phones are small"})
    phone = {"viewport": {"width": 390, "height": 760}, "is_mobile": True, "has_touch": True}
    alice = await Person.open(browser, server, "alice", **phone)
    page = alice.page
    await alice.register()
    await alice.expect_live()
    await page.get_by_role("button", name="Menu").click()
    await alice.submit("search-form", "Search messages", "phones")
    await expect(page.locator("#search-summary")).to_have_text("1 message found.")
    assert await page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    await page.locator("#search-list").get_by_role("button").click()
    await expect(page.locator("#view-title")).to_have_text("Public feed")
    await expect(page.locator("#sidebar")).to_be_hidden()
    await page.get_by_role("button", name="Menu").click()
    await alice.submit("channel-form", "New channel", "pocket")
    await page.get_by_role("button", name="Members").click()
    await expect(page.locator("#member-list li")).to_have_count(1)
    assert await page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    await alice.screenshot("conversations-phone")
    await alice.check_clean()
