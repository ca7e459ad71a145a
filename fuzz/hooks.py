"""Schemathesis hooks for fuzzing Button API V3 (named in fuzz/schemathesis.toml).

Two things schemathesis cannot know from the document alone:

- The API takes its token in the JSON body, not in a header, so schemathesis' own auth cannot
  fill it. `BodyToken` signs up a fuzzing user and puts its real token into every generated
  string `token`, so the fuzzing reaches past the 401 into channels, messages and DMs. An
  empty generated token is left alone, so the 401 answer is still exercised. `revoketoken`
  gets a fresh token of a second user each time, so it cannot end the run's authentication.
- JSON Schema cannot tell `2.0` from `2` (one number in its data model), but the contract
  accepts only the integer spelling (SPEC section 1: floats are invalid, 400) and schemathesis
  deliberately spells some integers as whole floats. `respell_whole_floats` writes them back as
  integers. That never changes whether a body matches the schema; the 400 for `1.0` is pinned
  by tests/test_validation.py instead.

Runs in the fuzzing virtualenv only (requirements-fuzz.txt), never under pytest.
"""

import json
import urllib.error
import urllib.parse
import urllib.request

import schemathesis

FUZZER = {"username": "fuzzer", "password": "Fuzz3r!pass"}
REVOKED = {"username": "revoked", "password": "Fuzz3r!pass"}  # tokens that revoketoken ends
NUMBER_FIELDS = ("count", "before", "after", "message_id", "seconds", "uses")


def _post(base_url: str, name: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{base_url}/api/v3/{name}/", data=json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.load(err)


def _fresh_token(base_url: str, user: dict) -> str:
    status, got = _post(base_url, "register", user)
    if status not in (201, 401):  # 401: registered by an earlier call
        raise RuntimeError(f"cannot register {user['username']}: {status} {got}")
    status, got = _post(base_url, "generatetoken", user)
    if status != 200:
        raise RuntimeError(f"cannot make a token for {user['username']}: {status} {got}")
    return got["token"]


def _origin(context) -> str:
    base = urllib.parse.urlsplit(context.operation.schema.get_base_url())
    return f"{base.scheme}://{base.netloc}"


@schemathesis.auth()
class BodyToken:
    """The fuzzing user's real token, in the body's `token` field."""

    token = None

    def get(self, case, context):
        if self.token is None:
            self.token = _fresh_token(_origin(context), FUZZER)
        return self.token

    def set(self, case, data, context):
        body = case.body
        if isinstance(body, dict) and isinstance(body.get("token"), str) and body["token"]:
            if case.operation.path.rstrip("/").endswith("/revoketoken"):
                data = _fresh_token(_origin(context), REVOKED)
            body["token"] = data


@schemathesis.hook("before_call")
def respell_whole_floats(context, case, kwargs):
    body = case.body
    if isinstance(body, dict):
        for name in NUMBER_FIELDS:
            value = body.get(name)
            if isinstance(value, float) and value.is_integer():
                body[name] = int(value)
