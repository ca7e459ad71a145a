"""Accounts and tokens: seed "Accounting system" and "Token system", SPEC §2 and §3."""

import asyncio
import re
import uuid

import pytest
from helpers import BAD_CREDENTIALS, ID, PASSWORD, UUID4_RE, db_file_bytes

PASSWORD_411 = (
    411,
    {
        "message": "Password needs to have 8-20 chars minimum one number minimum one capital "
        "letter minimum one special symbol no empty symbols!"
    },
)
USERNAME_LENGTH_411 = (411, {"message": "Username needs to be 3-20 chars long!"})
USERNAME_CHARS_411 = (411, {"message": "Username can not contain spaces or control characters!"})
ACCOUNT_ENDPOINTS = ["register", "login", "generatetoken", "gettoken"]

# SPEC §2: 8-20 code points, a digit, an uppercase letter, a symbol, no whitespace (str.is*).
BAD_PASSWORDS = {
    "empty": "",
    "7 chars": "Abcde1!",
    "21 chars": "Ab1!" + "x" * 17,
    "7 code points, 19 bytes": "Ab1" + "😀" * 4,
    "21 four-byte code points": "𝐀𝟏" + "😀" * 19,
    "no digit": "Password!",
    "no uppercase": "passw0rd!",
    "no symbol": "Passw0rdx",
    "only letters and digits, non-Latin": "ПАРОЛЬ12345",
    "space": "Pass w0rd!",
    "leading space": " Passw0rd!",
    "tab": "Passw0rd!\t",
    "newline": "Passw0rd!\n",
    "no-break space": "Pass\u00a0w0rd!",
    "ideographic space": "Pass\u3000w0rd!",
}
GOOD_PASSWORDS = {
    "8 chars": "Abcdef1!",
    "20 chars": "Ab1!" + "x" * 16,
    "underscore is a symbol": "Passw0rd_",
    "accented Latin, euro sign": "Ünïcødé1€x",
    "Cyrillic": "ПАРОЛЬ1!x",
    "Greek": "Ωmega123#",
    "Japanese with a Latin capital": "パスワードA1!",
    "Arabic-Indic digit": "Passwor٣!",
    "fullwidth capital and digit": "Ａbcdefg１!",
    "8 code points of emoji": "Ab1" + "😀" * 5,
    "20 four-byte code points (80 bytes)": "𝐀𝟏" + "😀" * 18,
    "NUL is a symbol": "Ab1\x00xxxxx",
}
# SPEC §2: 3-20 code points; then no whitespace (str.isspace), no Cc/Cf characters.
BAD_USERNAME_LENGTHS = {
    "empty": "",
    "2 chars": "ab",
    "21 chars": "a" * 21,
    "2 emoji": "😀😀",
    "21 emoji": "😀" * 21,
    "e + combining accent is 2 code points": "e\u0301",
    "2 zero-width spaces: length first": "\u200b\u200b",
    "2 chars with a space: length first": "a ",
    "21 spaces: length first": " " * 21,
}
BAD_USERNAME_CHARS = {
    "inner space": "al ice",
    "leading space": " alice",
    "trailing space": "alice ",
    "tab": "ali\tce",
    "newline": "ali\nce",
    "no-break space": "ali\u00a0ce",
    "ideographic space": "ali\u3000ce",
    "NUL": "ali\x00ce",
    "DEL": "ali\x7fce",
    "next line U+0085": "ali\x85ce",
    "zero-width space U+200B": "ali\u200bce",
    "right-to-left override U+202E": "ali\u202ece",
    "left-to-right isolate U+2066": "ali\u2066ce",
    "byte order mark U+FEFF": "\ufeffalice",
    "soft hyphen U+00AD": "ali\u00adce",
}
GOOD_USERNAMES = {
    "3 chars": "abc",
    "20 chars": "a" * 20,
    "3 emoji": "😀😀😀",
    "20 emoji": "😀" * 20,
    "Greek": "Ωmega",
    "Japanese": "名前です",
    "punctuation": "user_name-1.x",
}


def creds(username="alice", password=PASSWORD):
    return {"username": username, "password": password}


@pytest.fixture
async def alice(api):
    await api.register("alice")


# --- format rules, identical on every account endpoint ---------------------------------------


@pytest.mark.parametrize("endpoint", ACCOUNT_ENDPOINTS)
@pytest.mark.parametrize("password", BAD_PASSWORDS.values(), ids=BAD_PASSWORDS.keys())
async def test_bad_password_is_411(api, snapshot, alice, endpoint, password):
    before = snapshot()
    assert await api.post(endpoint, creds("alice", password)) == PASSWORD_411
    assert snapshot() == before


@pytest.mark.parametrize("endpoint", ACCOUNT_ENDPOINTS)
@pytest.mark.parametrize("username", BAD_USERNAME_LENGTHS.values(), ids=BAD_USERNAME_LENGTHS.keys())
async def test_bad_username_length_is_411(api, snapshot, endpoint, username):
    before = snapshot()
    assert await api.post(endpoint, creds(username)) == USERNAME_LENGTH_411
    assert snapshot() == before


@pytest.mark.parametrize("endpoint", ACCOUNT_ENDPOINTS)
@pytest.mark.parametrize("username", BAD_USERNAME_CHARS.values(), ids=BAD_USERNAME_CHARS.keys())
async def test_bad_username_characters_is_411(api, snapshot, endpoint, username):
    before = snapshot()
    assert await api.post(endpoint, creds(username)) == USERNAME_CHARS_411
    assert snapshot() == before


@pytest.mark.parametrize("endpoint", ACCOUNT_ENDPOINTS)
@pytest.mark.parametrize(
    ("username", "password", "expected"),
    [
        ("ab", "short", PASSWORD_411),  # password is checked before the username
        ("al ice", "short", PASSWORD_411),
        ("", "", PASSWORD_411),
        ("ab", PASSWORD, USERNAME_LENGTH_411),
        ("al ice", PASSWORD, USERNAME_CHARS_411),
    ],
)
async def test_password_is_checked_before_username(
    api, snapshot, endpoint, username, password, expected
):
    before = snapshot()
    assert await api.post(endpoint, creds(username, password)) == expected
    assert snapshot() == before


@pytest.mark.parametrize("password", GOOD_PASSWORDS.values(), ids=GOOD_PASSWORDS.keys())
async def test_any_password_meeting_the_rules_works(api, password):
    assert await api.post("register", creds("alice", password)) == (
        201,
        {"message": "User registered successfully!"},
    )
    assert await api.post("login", creds("alice", password)) == (
        200,
        {"message": "Login successful!"},
    )
    status, body = await api.post("generatetoken", creds("alice", password))
    assert (status, body["message"]) == (200, "Made token!")
    assert await api.post("gettoken", creds("alice", password)) == (
        200,
        {"message": "Returning token!", "token": body["token"]},
    )
    assert await api.post("login", creds("alice", "Wr0ng!pass")) == BAD_CREDENTIALS


@pytest.mark.parametrize("username", GOOD_USERNAMES.values(), ids=GOOD_USERNAMES.keys())
async def test_any_username_meeting_the_rules_works(api, username):
    assert await api.post("register", creds(username)) == (
        201,
        {"message": "User registered successfully!"},
    )
    assert await api.post("login", creds(username)) == (200, {"message": "Login successful!"})


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # 20 four-byte characters are 80 bytes: they differ only past bcrypt's 72-byte limit
        ("𝐀𝟏" + "😀" * 18, "𝐀𝟏" + "😀" * 17 + "😁"),
        ("𝐀𝟏" + "😀" * 18, "𝐀𝟏" + "😀" * 17 + "!"),
        ("Ab1!" + "x" * 16, "Ab1!" + "x" * 15 + "y"),
        # a NUL must not end the password early
        ("Ab1\x00xxxxx", "Ab1\x00yyyyy"),
    ],
    ids=["80 bytes, last emoji differs", "80 vs 77 bytes", "20 ASCII", "after a NUL"],
)
async def test_passwords_differing_only_at_the_end_are_different(api, first, second):
    await api.register("alice", first)
    assert await api.post("login", creds("alice", second)) == BAD_CREDENTIALS
    assert await api.post("generatetoken", creds("alice", second)) == BAD_CREDENTIALS
    assert await api.post("login", creds("alice", first)) == (200, {"message": "Login successful!"})


# --- register -----------------------------------------------------------------------------------


async def test_register_creates_an_account(api, snapshot):
    before = snapshot()
    assert await api.post("register", creds("alice")) == (
        201,
        {"message": "User registered successfully!"},
    )
    assert snapshot() != before
    assert await api.post("login", creds("alice")) == (200, {"message": "Login successful!"})


@pytest.mark.parametrize("username", ["alice", "ALICE", "Alice", "aLiCe"])
async def test_register_existing_username_is_401_case_insensitively(api, snapshot, alice, username):
    before = snapshot()
    assert await api.post("register", creds(username, "0ther!Pass")) == (
        401,
        {"message": "User exists!"},
    )
    assert snapshot() == before
    assert await api.post("login", creds("alice", "0ther!Pass")) == BAD_CREDENTIALS


@pytest.mark.parametrize(
    ("first", "second", "same_account"),
    [
        ("Alice", "alice", True),
        ("ΩMEGA", "Ωmega", True),  # only the ASCII letters differ in case
        # SPEC §2 (turn 2): a new name that equals an existing one after NFKC and case folding
        # is refused too, but finding an account stays ASCII-only (SQLite NOCASE)
        ("Ωmega", "ωmega", False),
        ("Ärger", "ärger", False),
        ("straße", "STRASSE", False),
    ],
)
async def test_username_case_insensitivity_is_ascii_only(api, first, second, same_account):
    assert await api.post("register", creds(first, "F1rst!pass")) == (
        201,
        {"message": "User registered successfully!"},
    )
    assert await api.post("register", creds(second, "S3cond!pass")) == (
        401,
        {"message": "User exists!"},
    )
    if same_account:
        assert await api.post("login", creds(second, "F1rst!pass")) == (
            200,
            {"message": "Login successful!"},
        )
    else:
        assert await api.post("login", creds(second, "F1rst!pass")) == BAD_CREDENTIALS
    assert await api.post("login", creds(first, "F1rst!pass")) == (
        200,
        {"message": "Login successful!"},
    )


@pytest.mark.parametrize(
    "spellings",
    [["bob"] * 30, ["bob", "Bob", "BOB", "bOb", "boB", "BoB"] * 5],
    ids=["same spelling", "mixed case"],
)
async def test_concurrent_registrations_of_one_name_make_one_account(api, spellings):
    answers = await asyncio.gather(*(api.post("register", creds(name)) for name in spellings))
    assert (
        sorted(answers, key=lambda a: a[0])
        == [(201, {"message": "User registered successfully!"})]
        + [(401, {"message": "User exists!"})] * 29
    )
    assert await api.post("login", creds("BOB")) == (200, {"message": "Login successful!"})


async def test_passwords_are_stored_only_as_bcrypt_hashes(api, db_path, snapshot):
    password = "Pl4intext!Secret"
    await api.register("alice", password)
    assert password.encode() not in db_file_bytes(db_path)
    values = [v for rows in snapshot().values() for row in rows for v in row]
    hashes = [v for v in values if isinstance(v, (str, bytes)) and _is_bcrypt(v)]
    assert len(hashes) == 1, values  # bcrypt_rounds=4 from the test config


def _is_bcrypt(value):
    text = value.decode() if isinstance(value, bytes) else value
    return re.fullmatch(r"\$2[aby]\$04\$[./A-Za-z0-9]{53}", text) is not None


async def test_password_hashing_does_not_block_other_requests(start, tmp_path):
    client = await start(db=str(tmp_path / "slow.db"), bcrypt_rounds=13)
    body = {"username": "alice", "password": PASSWORD}

    async def register_alice():
        async with client.post("/api/v3/register/", json=body) as resp:
            return resp.status

    register = asyncio.create_task(register_alice())
    answered_meanwhile = 0
    while not register.done():
        async with client.get("/api/v3/health/") as resp:
            assert resp.status == 200
        if not register.done():
            answered_meanwhile += 1
    assert await register == 201
    assert answered_meanwhile >= 3


# --- login, and credentials on the token endpoints ----------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        ("login", creds("alice"), (200, {"message": "Login successful!"})),
        ("login", creds("ALICE"), (200, {"message": "Login successful!"})),
        ("login", creds("alice", "Passw0rd?"), BAD_CREDENTIALS),
        ("login", creds("alice", "PASSW0RD!"), BAD_CREDENTIALS),  # passwords keep their case
        ("login", creds("bob"), BAD_CREDENTIALS),
        ("generatetoken", creds("alice", "Passw0rd?"), BAD_CREDENTIALS),
        ("generatetoken", creds("bob"), BAD_CREDENTIALS),
        ("gettoken", creds("alice", "Passw0rd?"), BAD_CREDENTIALS),  # credentials before No token!
        ("gettoken", creds("bob"), BAD_CREDENTIALS),
        ("gettoken", creds("alice"), (401, {"message": "No token!"})),
        ("gettoken", creds("Alice"), (401, {"message": "No token!"})),
    ],
)
async def test_credentials(api, snapshot, alice, endpoint, body, expected):
    before = snapshot()
    assert await api.post(endpoint, body) == expected
    assert snapshot() == before  # login checks credentials and changes nothing


# --- tokens -------------------------------------------------------------------------------------


async def test_generatetoken_makes_then_changes_the_token(api, snapshot, alice):
    status, made = await api.post("generatetoken", creds("alice"))
    assert (status, made) == (200, {"message": "Made token!", "token": made["token"]})
    assert UUID4_RE.fullmatch(made["token"]) and uuid.UUID(made["token"]).version == 4
    assert await api.post("gettoken", creds("ALICE")) == (
        200,
        {"message": "Returning token!", "token": made["token"]},
    )

    status, changed = await api.post("generatetoken", creds("Alice"))
    assert (status, changed) == (200, {"message": "Changed token!", "token": changed["token"]})
    assert UUID4_RE.fullmatch(changed["token"]) and changed["token"] != made["token"]
    assert await api.post("gettoken", creds("alice")) == (
        200,
        {"message": "Returning token!", "token": changed["token"]},
    )

    before = snapshot()
    assert await api.post("gettoken", creds("alice")) == (
        200,
        {"message": "Returning token!", "token": changed["token"]},
    )
    assert snapshot() == before


async def test_each_user_gets_an_own_token(api):
    alice, bob = await api.user("alice"), await api.user("bob")
    assert alice != bob
    await api.ok("generatetoken", creds("alice"))
    assert await api.post("getmysentmessages", {"token": bob}) == (
        404,
        {"message": "No sent messages!"},
    )


@pytest.fixture
async def rotated(api):
    """alice with an old and a new token, plus data every token endpoint can act on."""
    old = await api.user("alice")
    await api.user("bob")
    await api.channel(old, "general")
    public_id = await api.public(old, "hello everyone")
    await api.dm(old, "bob", "hi bob")
    new = (await api.ok("generatetoken", creds("alice")))["token"]
    assert new != old
    return {"old": old, "new": new, "public_id": public_id}


TOKEN_ENDPOINTS = {
    "senddcmsgwithtoken": ({"message": "hi"}, 200),
    "getmessagesforeveryone": ({"count": 10}, 200),
    "getmysentmessages": ({}, 200),
    "readmessagesfromchannel": ({"name": "general"}, 200),
    "readmessagesfromchannel by id": ({"message_id": "public_id"}, 200),
    "deletemessage": ({"message_id": "public_id"}, 200),
    "makechannel": ({"name": "random"}, 200),
    "addusertochannel": ({"name": "general", "username": "bob"}, 200),
    "sendmessage": ({"message": "hi", "channel": "general"}, 200),
    "getchannels": ({}, 200),
    "getdms": ({"count": 10}, 200),
    "senddm": ({"username": "bob", "message": "hi"}, 200),
    "senddcmsg": ({"channel": "general", "message": "hi"}, 503),
}


@pytest.mark.parametrize("endpoint", TOKEN_ENDPOINTS)
async def test_old_token_is_refused_everywhere_after_generatetoken(
    api, snapshot, rotated, endpoint
):
    fields, ok_status = TOKEN_ENDPOINTS[endpoint]
    fields = {k: rotated[v] if v == "public_id" else v for k, v in fields.items()}
    name = endpoint.split()[0]

    before = snapshot()
    assert await api.post(name, {"token": rotated["old"], **fields}) == (
        401,
        {"message": "Invalid token!"},
    )
    assert snapshot() == before
    status, _ = await api.post(name, {"token": rotated["new"], **fields})
    assert status == ok_status


@pytest.mark.parametrize("endpoint", sorted({e.split()[0] for e in TOKEN_ENDPOINTS}))
@pytest.mark.parametrize("token", ["", "nope", str(uuid.uuid4())], ids=["empty", "word", "uuid4"])
async def test_unknown_token_is_401(api, snapshot, rotated, endpoint, token):
    fields = dict(TOKEN_ENDPOINTS[endpoint][0])
    fields = {k: rotated[v] if v == "public_id" else v for k, v in fields.items()}
    before = snapshot()
    assert await api.post(endpoint, {"token": token, **fields}) == (
        401,
        {"message": "Invalid token!"},
    )
    assert snapshot() == before


async def test_token_rotation_does_not_touch_other_users(api):
    alice = await api.user("alice")
    bob = await api.user("bob")
    await api.ok("generatetoken", creds("bob"))
    assert await api.post("senddcmsgwithtoken", {"token": alice, "message": "still here"}) == (
        200,
        {"message": "Sent message!", "id": ID},
    )
    assert await api.post("getchannels", {"token": bob}) == (401, {"message": "Invalid token!"})
