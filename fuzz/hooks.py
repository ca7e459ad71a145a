"""Schemathesis hooks for fuzzing Button API V3 (named in fuzz/schemathesis.toml).

What schemathesis cannot know from the document alone, so that the fuzzing reaches past the
front door (the token, the password check, the role check, the lookup of a name or an id):

- Who acts. The API takes its token in the JSON body, so schemathesis' own auth cannot fill
  it. A generated string `token` becomes a real one: the admin's (made by fuzz/run with the
  command line, FUZZ_ADMIN_*) for the operations permissions.RULES reserves to moderators and
  admins (one case in eight keeps a member's token, so their 403 stays fuzzed), else the
  member `fuzzer`'s. One case in eight keeps its generated token (the 401 path), and a real
  token is kept: a stateful step took it from an earlier answer (an OpenAPI link).
- Real values. In positive cases (three in four outside the stateful phase; the choices
  follow each operation's count of calls, so a seed replays the same run), a field that
  names something and does not already name something real (a link's value) gets a real
  one: `username` an existing user, `name`/`channel` a channel of the token's user,
  `message_id` a message it wrote, the account operations a real username and password,
  makechannel and register a new name. The rest keep their generated values, so the
  401/404/411 paths stay fuzzed. Negative cases keep theirs: they must stay invalid.
  `World.learn` reads every successful answer of the run (who registered, which channels a
  token made, which messages it sent), so stateful steps reuse what earlier steps made.
- What must survive the run. Operations that destroy what they are given get throwaways:
  `revoketoken` a throwaway user's token; `changepassword` and `deleteaccount` a fresh user;
  `leavechannel` a fresh channel; `removeuserfromchannel` PEER from a fresh channel;
  `deletemessage` a fresh message; linkchannel and unlinkchannel the fake Discord's free
  channel. The operations that act on a user (RULES with a target: ban, timeout, setrole...)
  name one of a few victims (`unbanuser` one the hooks just banned). And `_guard` runs on
  every case, whoever chose its values (schemathesis also reuses values it saw in earlier
  answers): it never lets a case ban, time out, demote or remove an identity of the run,
  revoke its token, take ROOM's members or link, or count wrong passwords against its name.
- JSON Schema cannot tell `2.0` from `2` (one number in its data model), but the contract
  accepts only the integer spelling (SPEC section 1: floats are invalid, 400) and schemathesis
  deliberately spells some integers as whole floats. Whole floats are written back as
  integers. That never changes whether a body matches the schema; the 400 for `1.0` is pinned
  by tests/test_validation.py instead.

Every answer is also counted (FUZZ_REPORT, one line per call): `python fuzz/hooks.py FILE`
prints, per operation, how many cases got past authentication and validation, and fails when
an operation has fewer than MIN_PAST_FRONT_DOOR, unless CANNOT_REACH says why it cannot.

Runs in the fuzzing virtualenv only (requirements-fuzz.txt), never under pytest.
"""

import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections import Counter
from pathlib import Path

import schemathesis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from permissions import RULES  # noqa: E402  (who may do what: the server's own table)

MIN_PAST_FRONT_DOOR = 20
# Answers that come from the front door: the body's shape (400), the token or the password
# (401), the role (403), the time or size of the request (408, 413), the format rules (411)
# and the abuse limits (429). Anything else documented for the operation, or a 2xx, got past.
FRONT_DOOR = {400, 401, 403, 408, 411, 413, 429}
# Operations that cannot get MIN_PAST_FRONT_DOOR cases past the front door in this setting,
# and why. The one place to list them: nothing else is left out of the report's verdict.
CANNOT_REACH = {
    "health": "takes no input: one case per phase",
    "openapi": "takes no input; and schemathesis leaves out the operation that served the"
    " document it loaded unless a filter names it (`fuzz/run --include-operation-id openapi`)",
    "webchat": "takes no input: one case per phase",
}
PASSWORD = "Fuzz3r!pass"
FUZZER = {"username": "fuzzer", "password": PASSWORD}  # the member every other operation uses
PEER = {"username": "fuzzpeer", "password": PASSWORD}  # the other party of DMs and channels
ACCOUNT = {"username": "fuzzaccount", "password": PASSWORD}  # login, gettoken, generatetoken
VICTIMS = [{"username": f"fuzzvictim{n}", "password": PASSWORD} for n in range(4)]
ROOM = "fuzz-room"  # FUZZER's channel, PEER a member
NUMBER_FIELDS = ("count", "before", "after", "message_id", "seconds", "uses")
# The operations that act on the user they name (a ban, a timeout, a role): they name a
# victim, never an identity the rest of the run relies on.
ACTS_ON_USER = {name for name, rule in RULES.items() if rule.on_user}
# The operations that would change ROOM (its members, its link): never given ROOM.
KEEP_ROOM = {"leavechannel", "removeuserfromchannel", "unlinkchannel"}
# The field that names what the operation makes, not something it looks up.
CREATES = {"makechannel": "name", "register": "username"}
# A fresh channel of FUZZER's: leaving ends its membership, and PEER is already in ROOM.
FRESH_CHANNEL = {"leavechannel", "addusertochannel", "linkchannel"}
# fuzz/run's fake Discord guild (FUZZ_DISCORD set): ROOM is linked to DISCORD_ROOM, so
# senddcmsg reaches Discord; a linkchannel case links a fresh channel to DISCORD_FREE (the
# hooks unlink it first if it is taken), an unlinkchannel case unlinks the channel linked
# there (the hooks link one first if none is).
DISCORD_ROOM, DISCORD_FREE = "general", "random"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


class World:
    """What the hooks give to generated cases: identities, channels and messages made on first
    use through the API itself (the admin by fuzz/run, through the command line), and what
    every successful answer of the run named (`learn`): who exists, which channels each token's
    user made, which messages it sent."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url
        self.tokens: dict[str, str] = {}  # the hooks' own users
        self.passwords: dict[str, str] = {}  # theirs, by lowercased username
        self.users: set[str] = set()
        self.channels: dict[str, list[str]] = {}  # by token
        self.messages: dict[str, list[int]] = {}  # by token
        self.serial = 0
        self.calls: dict[str, int] = {}
        self.linked: str | None = None  # the channel linked to DISCORD_FREE, if any

    def call(self, name: str, body: dict, *ok: int) -> dict | None:
        """The answer when its status is one of `ok`; None otherwise (a token that a case
        ended, say); the hooks' own identities must work, and `token` raises if not."""
        request = urllib.request.Request(
            f"{self.base}/api/v3/{name}/", data=json.dumps(body).encode(), method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, answer = response.status, json.load(response)
        except urllib.error.HTTPError as err:
            with err:
                status, answer = err.code, json.load(err)
        self.learn(name, body, status, answer)
        return answer if status in ok else None

    def learn(self, name: str, body: dict, status: int, answer: object) -> None:
        if not 200 <= status < 300 or not isinstance(answer, dict):
            return
        token = body.get("token")
        if name == "register":
            self.users.add(body["username"])
        elif name == "deleteaccount":
            self.users.discard(body["username"])
        elif name == "makechannel":
            self.channels.setdefault(token, []).append(answer["channel_name"])
        elif name == "leavechannel":
            mine = self.channels.get(token, [])
            self.channels[token] = [c for c in mine if c != answer["channel_name"]]
        elif name == "linkchannel" and body.get("discord_channel") == DISCORD_FREE:
            self.linked = answer["name"]
        elif name == "unlinkchannel" and body.get("name") == self.linked:
            self.linked = None
        elif name == "deletemessage":
            mine = self.messages.get(token, [])
            self.messages[token] = [i for i in mine if str(i) != str(body["message_id"])]
        if isinstance(answer.get("id"), int) and isinstance(token, str):  # a send
            self.messages.setdefault(token, []).append(answer["id"])

    def token(self, user: dict) -> str:
        name = user["username"]
        self.passwords[name.lower()] = user["password"]
        if name not in self.tokens:
            self.call("register", user, 201, 401)  # 401: made by an earlier case
            got = self.call("generatetoken", user, 200)
            if got is None:
                raise RuntimeError(f"fuzz hooks: no token for {name}")
            self.tokens[name] = got["token"]
            self.users.add(name)
        return self.tokens[name]

    def admin_token(self) -> str:
        name, password = (
            os.environ.get("FUZZ_ADMIN_USERNAME"),
            os.environ.get("FUZZ_ADMIN_PASSWORD"),
        )
        if not name or not password:
            raise RuntimeError("fuzz hooks: FUZZ_ADMIN_USERNAME/PASSWORD unset (run fuzz/run)")
        return self.token({"username": name, "password": password})

    def protected(self, username: str) -> bool:
        """An identity the rest of the run relies on (names match case-insensitively)."""
        return username.lower() in self.passwords

    def setup(self) -> None:
        """FUZZER's channel ROOM with PEER in it, and a DM between them: every list has one.
        With fuzz/run's fake Discord, ROOM is linked to DISCORD_ROOM for senddcmsg."""
        token, peer = self.token(FUZZER), self.token(PEER) and PEER["username"]
        steps = [
            ("makechannel", {"token": token, "name": ROOM}),
            ("addusertochannel", {"token": token, "name": ROOM, "username": peer}),
            ("senddm", {"token": token, "username": peer, "message": "fuzz"}),
        ]
        if os.environ.get("FUZZ_DISCORD"):
            body = {"token": self.admin_token(), "name": ROOM, "discord_channel": DISCORD_ROOM}
            steps.append(("linkchannel", body))
        for name, body in steps:
            if self.call(name, body, 200) is None:
                raise RuntimeError(f"fuzz hooks: cannot set up: {name} {body}")

    def fresh(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    def fresh_user(self) -> dict:
        user = {"username": self.fresh("fuzztmp"), "password": PASSWORD}
        self.call("register", user, 201)
        return user

    def victim(self, pick: int) -> str:
        user = VICTIMS[pick % len(VICTIMS)]
        self.token(user)  # registered
        return user["username"]

    def channel_of(self, token: str) -> str:
        return (self.channels.get(token) or [ROOM])[0]

    def fresh_channel(self, token: str) -> str | None:
        got = self.call("makechannel", {"token": token, "name": self.fresh("fuzz-channel-")}, 200)
        return got and got["channel_name"]

    def fresh_message(self, token: str) -> int | None:
        got = self.call("senddcmsgwithtoken", {"token": token, "message": "fuzz"}, 200)
        return got and got["id"]

    def linked_channel(self, token: str) -> str | None:
        """The channel linked to DISCORD_FREE; a fresh one linked there if none is."""
        if self.linked is None:
            channel = self.fresh_channel(token)
            body = {"token": token, "name": channel, "discord_channel": DISCORD_FREE}
            self.call("linkchannel", body, 200)
        return self.linked

    def unlink(self, token: str) -> None:
        """DISCORD_FREE free again, for a linkchannel case."""
        if self.linked is not None:
            self.call("unlinkchannel", {"token": token, "name": self.linked}, 200)

    def message_of(self, token: str) -> int | None:
        mine = self.messages.get(token)
        return mine[-1] if mine else self.fresh_message(token)


WORLD: World | None = None


def _world(case) -> World:
    global WORLD
    if WORLD is None:
        base = urllib.parse.urlsplit(case.operation.schema.get_base_url())
        WORLD = World(f"{base.scheme}://{base.netloc}")
        WORLD.setup()
    return WORLD


def _operation(case) -> str:
    return case.operation.schema.get_operation_id(case.operation) or case.operation.label


STATEFUL_PICK = 0x1111  # a real token, the admin's for RULES, a valid password for register


def _pick(world: World, name: str) -> int:
    """A number for the operation's next call: the same seed sends the same cases in the same
    order, so the same run makes the same choices."""
    world.calls[name] = world.calls.get(name, 0) + 1
    return zlib.crc32(f"{name} {world.calls[name]}".encode())


def _positive(case) -> bool:
    meta = case.meta
    return meta is not None and str(meta.generation.mode.value) == "positive"


def _stateful(case) -> bool:
    meta = case.meta
    return meta is not None and str(meta.phase.name.value) == "stateful"


def _set_token(world: World, name: str, body: dict, pick: int) -> None:
    token = body.get("token")
    if not isinstance(token, str) or UUID4.match(token) or (pick >> 8) % 8 == 0:
        return  # a real token is an earlier answer's (a link); one in eight: the 401 path
    if name == "revoketoken":  # it ends the token it is given
        body["token"] = world.token(world.fresh_user())
    elif name in RULES and (pick >> 4) % 8:
        body["token"] = world.admin_token()
    else:
        body["token"] = world.token(FUZZER)


def _fill_names(world: World, name: str, body: dict, pick: int) -> None:
    """Real values for the fields of a token operation that name something, unless they
    already are (an earlier answer's, through a link): the token's own channel and message."""
    token = body["token"]
    if name == "removeuserfromchannel":  # PEER, from a fresh channel: ROOM keeps its members
        channel, peer = world.fresh_channel(token), PEER["username"]
        added = {"token": token, "name": channel, "username": peer}
        if channel and world.call("addusertochannel", added, 200):
            body.update(name=channel, username=peer)
        return
    username = body.get("username")
    if isinstance(username, str):
        if name in ACTS_ON_USER:  # a moderation: never an identity of the run
            if username not in world.users or world.protected(username):
                body["username"] = world.victim(pick >> 12)
            if name == "unbanuser":  # a victim under a ban, so the case has one to lift
                world.call("banuser", {"token": world.admin_token(), "username": body["username"]})
        elif username not in world.users:
            body["username"] = PEER["username"]
    for field in ("name", "channel"):
        value = body.get(field)
        if not isinstance(value, str):
            continue
        if CREATES.get(name) == field:  # a new name, so the links from its answer go on
            body[field] = world.fresh(f"fuzz-{name}-")
        elif name == "unlinkchannel":
            body[field] = world.linked_channel(token) or value
        elif name in FRESH_CHANNEL:
            body[field] = world.fresh_channel(token) or value
        elif value not in world.channels.get(token, []):
            body[field] = world.channel_of(token)
    if isinstance(body.get("discord_channel"), str):
        body["discord_channel"] = DISCORD_FREE
        world.unlink(token)
    if "message_id" in body and isinstance(token, str):
        mine = [str(i) for i in world.messages.get(token, [])]
        if str(body["message_id"]) not in mine:
            fresh = world.fresh_message if name == "deletemessage" else world.message_of
            body["message_id"] = fresh(token) or body["message_id"]


def _fill_account(world: World, name: str, body: dict, pick: int) -> None:
    """A real username and password for the account operations, unless the username is
    already one a link brought."""
    if name in CREATES:
        body[CREATES[name]] = world.fresh(f"fuzz{name}")
        if pick % 2:
            body["password"] = PASSWORD
    elif body["username"] in world.users and not world.protected(body["username"]):
        return
    elif name in ("changepassword", "deleteaccount"):  # they end the pair they are given
        body.update(world.fresh_user())
    else:
        world.token(ACCOUNT)  # registered, with a token for gettoken
        body.update(ACCOUNT)


def _guard(world: World, name: str, body: dict, pick: int) -> None:
    """Whoever chose the values (schemathesis also reuses values it saw in earlier answers:
    usernames, channel names, tokens), no case ends what the rest of the run relies on."""
    username = body.get("username")
    if isinstance(username, str) and world.protected(username):
        if "token" not in body and body.get("password") != world.passwords[username.lower()]:
            # a wrong password would count towards the identity's limit of failed checks
            body["username"] = world.fresh("fuzzunknown")
        elif name in ACTS_ON_USER:
            body["username"] = world.victim(pick >> 12)
    if name == "revoketoken" and body.get("token") in world.tokens.values():
        body["token"] = world.token(world.fresh_user())
    channel = body.get("name")
    if name in KEEP_ROOM and isinstance(channel, str) and channel.lower() == ROOM:
        body["name"] = world.fresh("fuzz-unknown-")


@schemathesis.hook("before_call")
def real_values(context, case, kwargs):
    body = case.body
    if not isinstance(body, dict):
        return
    world, name = _world(case), _operation(case)
    # The stateful phase makes the same choice every time: Hypothesis replays a scenario and
    # stops the phase (FlakyStrategyDefinition) when the same steps answer differently.
    pick = STATEFUL_PICK if _stateful(case) else _pick(world, name)
    _set_token(world, name, body, pick)
    if _positive(case) and (pick % 4 or _stateful(case)):
        if "token" in body:
            _fill_names(world, name, body, pick)
        elif isinstance(body.get("username"), str) and isinstance(body.get("password"), str):
            _fill_account(world, name, body, pick)
    _guard(world, name, body, pick)
    for field in NUMBER_FIELDS:
        value = body.get(field)
        if isinstance(value, float) and value.is_integer():
            body[field] = int(value)


@schemathesis.deserializer("text/html", "text/css", "text/javascript", "image/svg+xml")
def web_chat_text(ctx, response):
    """The web chat's text files (their documented schema is any value): UTF-8 text."""
    return response.content.decode("utf-8")


@schemathesis.deserializer("image/png")
def web_chat_png(ctx, response):
    """The web chat's images: a PNG file's signature, then anything."""
    if not response.content.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("not a PNG file")
    return len(response.content)


@schemathesis.hook("after_call")
def count_answer(context, case, response):
    status = response.status_code
    if isinstance(case.body, dict) and 200 <= status < 300:
        try:
            answer = json.loads(response.content)
        except ValueError:
            answer = None
        _world(case).learn(_operation(case), case.body, status, answer)
    path = os.environ.get("FUZZ_REPORT")
    if not path:
        return
    documented = str(status) in case.operation.responses.status_codes
    past = 200 <= status < 300 or (400 <= status < 500 and documented and status not in FRONT_DOOR)
    with open(path, "a", encoding="utf-8") as report:
        phase = case.meta.phase.name.value if case.meta is not None else "-"
        mode = case.meta.generation.mode.value if case.meta is not None else "-"
        report.write(f"{_operation(case)} {status} {int(past)} {phase} {mode}\n")


def report(path: str) -> int:
    """Print the per-operation table; 1 if an operation not in CANNOT_REACH has too few."""
    document = json.loads((ROOT / "static" / "openapi.json").read_text(encoding="utf-8"))
    operations = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    calls = {name: 0 for name in operations}
    past = {name: 0 for name in operations}
    ok = {name: 0 for name in operations}
    statuses: dict[str, Counter] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        name, status, counted = line.split()[:3]
        statuses.setdefault(name, Counter())[status] += 1
        calls[name] = calls.get(name, 0) + 1
        past[name] = past.get(name, 0) + int(counted)
        ok[name] = ok.get(name, 0) + (200 <= int(status) < 300)
    failed = []
    door = ", ".join(map(str, sorted(FRONT_DOOR)))
    print(f"past: a 2xx, or a 4xx documented for the operation other than {door}")
    print(f"{'operation':<24}{'calls':>6}{'2xx':>6}{'past':>6}  most common answers")
    for name in sorted(calls):
        note = ""
        if name in CANNOT_REACH:
            note = f"  exempt: {CANNOT_REACH[name]}"
        elif past[name] < MIN_PAST_FRONT_DOOR:
            note = f"  FEWER THAN {MIN_PAST_FRONT_DOOR}"
            failed.append(name)
        common = " ".join(f"{k}:{v}" for k, v in statuses.get(name, Counter()).most_common(4))
        print(f"{name:<24}{calls[name]:>6}{ok[name]:>6}{past[name]:>6}  {common:<32}{note}")
    if failed:
        print(
            f"fuzz: fewer than {MIN_PAST_FRONT_DOOR} cases past the front door: {', '.join(failed)}"
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(report(sys.argv[1]))
