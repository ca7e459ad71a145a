"""The OpenAPI 3.1 document (static/openapi.json): served, well formed, and matching the routes.

Every response of the whole test suite is also checked against it (helpers `answer` and `http`
call tests/contract.py), so the document cannot drift from the code. fuzz/run checks it with
openapi-spec-validator and fuzzes a live server from it with schemathesis.
"""

import re
from pathlib import Path

import jsonschema
import pytest
from contract import (
    DOCUMENT_PATH,
    METHODS,
    check_response,
    document,
    follow,
    lookup,
    pointer,
    validator,
)
from helpers import answer, msg


def operations():
    """(path, method, operation) for every operation of the document."""
    for path, item in document()["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def walk(node, at=""):
    """Every (pointer, dict) inside the document."""
    if isinstance(node, dict):
        yield at, node
        for key, value in node.items():
            yield from walk(value, at + pointer(str(key))[1:])
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{at}/{i}")


def schema_pointers():
    """Every Schema Object the document holds (components, bodies, headers)."""
    doc = document()
    for name in doc["components"]["schemas"]:
        yield pointer("components", "schemas", name)
    for at, node in walk(doc, "#"):
        if "schema" in node and ("content" in at or "headers" in at):
            yield at + "/schema"


# --- the document itself ------------------------------------------------------------------------


async def test_the_document_is_served_byte_for_byte(client):
    async with client.get("/api/v3/openapi.json") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        served = await resp.read()
    assert served == DOCUMENT_PATH.read_bytes()
    async with client.get("/api/v3/openapi.json") as resp:
        assert (await answer(resp))[1]["openapi"] == "3.1.0"


def test_the_document_is_openapi_3_1():
    doc = document()
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    ids = [op["operationId"] for _, _, op in operations()]
    assert len(ids) == len(set(ids))
    for path, method, op in operations():
        assert op["responses"], (path, method)
        for status, response in op["responses"].items():
            assert re.fullmatch(r"[1-5][0-9][0-9]", status), (path, method, status)
            _, response = follow(pointer("paths", path, method, "responses", status))
            assert response["description"]
            if path.startswith("/api/v3/") or status != "200":  # the web chat's files aside
                assert list(response["content"]) == ["application/json"], (path, method, status)


def test_every_ref_resolves():
    refs = [node["$ref"] for _, node in walk(document()) if "$ref" in node]
    assert refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        lookup(ref)  # raises KeyError if it points nowhere


@pytest.mark.parametrize("at", sorted(set(schema_pointers())))
def test_every_schema_is_valid_json_schema_2020_12(at):
    jsonschema.Draft202012Validator.check_schema(lookup(at))
    validator(at)  # and its references resolve


@pytest.mark.parametrize(
    ("path", "method"),
    [(path, method) for path, method, op in operations() if "requestBody" in op],
)
def test_request_examples_match_their_schemas(path, method):
    at = pointer("paths", path, method, "requestBody", "content", "application/json")
    media = lookup(at)
    validator(at + "/schema").validate(media["example"])


def _request_fields(schema):
    fields = set(schema.get("properties", {}))
    for branch in schema.get("anyOf", []):
        fields |= set(branch.get("properties", {}))
    return fields


@pytest.mark.parametrize(
    ("path", "method"), [(path, method) for path, method, op in operations() if method == "post"]
)
def test_every_request_field_has_its_400(path, method):
    """The fields of the request schema are exactly those a 400 can name (SPEC section 1)."""
    op = document()["paths"][path][method]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    named = set()
    for branch in op["responses"]["400"]["content"]["application/json"]["schema"]["allOf"]:
        for text in branch.get("properties", {}).get("message", {}).get("enum", []):
            if match := re.fullmatch(r"Missing or invalid field: (\w+)!", text):
                named.add(match[1])
    assert _request_fields(schema) == named


# --- the document and the routes ----------------------------------------------------------------


def test_every_route_is_documented_and_every_operation_is_routed(client):
    routed = set()
    for route in client.app.router.routes():
        path, method = route.resource.canonical, route.method.lower()
        if path.startswith("/socket.io"):
            continue  # Engine.IO's own transport (SPEC section 5), not part of the JSON API
        if method == "head":
            assert route.resource.canonical in {
                r.resource.canonical for r in client.app.router.routes() if r.method == "GET"
            }
            continue  # answered with GET's headers; not an operation of its own
        if not path.endswith("/") and path + "/" in document()["paths"]:
            path += "/"  # every endpoint also answers without the trailing slash (SPEC §1)
        routed.add((path, method))
    assert routed == {(path, method) for path, method, _ in operations()}


async def test_the_slashless_alias_of_each_path_is_routed_too(client):
    for path, method, _ in operations():
        if path.endswith("/"):
            async with client.request(method, path.rstrip("/"), json={}) as resp:
                assert resp.status not in (404, 405), path


# --- the oracle catches what it should ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "headers", "body", "complaint"),
    [
        ("POST", "/api/v3/register/", 200, {}, {"message": "x"}, "does not list"),
        (
            "POST",
            "/api/v3/register/",
            201,
            {},
            {"message": "User registered successfully"},
            "does not match",
        ),
        (
            "POST",
            "/api/v3/senddm/",
            400,
            {},
            {"message": "Missing or invalid field: name!"},
            "match",
        ),
        (
            "POST",
            "/api/v3/login",
            429,
            {},
            {"message": "Too many attempts, try again later!", "retry_after": 3},
            "Retry-After",
        ),
        ("GET", "/api/v3/login/", 405, {}, {"message": "Method not allowed!"}, "Allow"),
        ("GET", "/api/v3/nope/", 405, {}, {"message": "Method not allowed!"}, "not 404"),
        (
            "POST",
            "/api/v3/getdms/",
            200,
            {},
            {"dms": [{**msg(1, "dm", "alice", "hi", channel="x"), "timestamp": "now"}]},
            "does not match",
        ),
    ],
)
def test_the_oracle_refuses_what_the_document_does_not_say(
    method, path, status, headers, body, complaint
):
    with pytest.raises(AssertionError, match=complaint):
        check_response(method, path, status, headers, body)


# --- found by schemathesis (fuzz/run) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/api/v3/login/", "POST"),
        ("/api/v3/login", "POST"),
        ("/api/v3/health/", "GET,HEAD"),
        ("/api/v3/openapi.json", "GET,HEAD"),
    ],
)
async def test_405_names_the_methods_the_path_takes(client, path, allowed):
    """RFC 9110: a 405 carries an Allow header."""
    method = "PUT"
    async with client.request(method, path) as resp:
        assert resp.headers["Allow"] == allowed
        assert await answer(resp) == (405, {"message": "Method not allowed!"})


async def test_leading_zeros_do_not_make_a_number_larger(api):
    """`"000...0900"` (30 digits) is 900, not an id past SQLite's range."""
    token = await api.user("alice")
    first = await api.public(token, "first")
    second = await api.public(token, "second")
    zeros = "0" * 30
    body = {"token": token, "count": zeros + "900"}
    assert await api.post("getmessagesforeveryone", body) == (
        200,
        {
            "message": "Got messages!",
            "messages": [
                msg(first, "public", "alice", "first"),
                msg(second, "public", "alice", "second"),
            ],
        },
    )
    body = {"token": token, "count": "1", "before": zeros + str(second)}
    assert await api.post("getmessagesforeveryone", body) == (
        200,
        {"message": "Got messages!", "messages": [msg(first, "public", "alice", "first")]},
    )
    body = {"token": token, "message_id": zeros + str(first)}
    assert await api.post("readmessagesfromchannel", body) == (
        200,
        {"messages": [msg(first, "public", "alice", "first")]},
    )
    assert await api.post("deletemessage", {"token": token, "message_id": zeros + str(second)}) == (
        200,
        {"message": "Message deleted!"},
    )
    assert await api.post("getmessagesforeveryone", {"token": token, "count": "0" * 30}) == (
        400,
        {"message": "Missing or invalid field: count!"},
    )


async def test_each_web_chat_file_has_a_documented_media_type(client):
    """The media type comes from the server's own table, not the machine's /etc/mime.types
    (which made app.js `application/javascript` on one machine, `text/javascript` on another)."""
    documented = document()["paths"]["/static/{name}"]["get"]["responses"]["200"]["content"]
    expected = {
        ".html": "text/html",
        ".js": "text/javascript",
        ".css": "text/css",
        ".json": "application/json",
        ".png": "image/png",
        ".svg": "image/svg+xml",
    }
    for path in sorted(DOCUMENT_PATH.parent.iterdir()):
        if path.name.startswith("."):
            continue
        async with client.get(f"/static/{path.name}") as resp:
            assert resp.status == 200, path.name
            assert resp.content_type in documented, (path.name, resp.content_type)
            assert resp.content_type == expected[path.suffix], path.name
            if resp.content_type.startswith(("text/", "application/json")):
                assert resp.charset == "utf-8", path.name


# --- every error the code can give is in the document ------------------------------------------


def documented_errors():
    """(status, message text) for every fixed `message` the document gives any answer."""
    found = set()

    def texts(node):
        if isinstance(node, dict):
            if "$ref" in node:
                yield from texts(lookup(node["$ref"]))
            message = node.get("properties", {}).get("message", {})
            yield from ([message["const"]] if "const" in message else message.get("enum", []))
            for key in ("allOf", "anyOf", "oneOf"):
                for branch in node.get(key, []):
                    yield from texts(branch)

    for path, method, _ in operations():
        for status in document()["paths"][path][method]["responses"]:
            _, response = follow(pointer("paths", path, method, "responses", status))
            for media in response["content"].values():
                found |= {(int(status), text) for text in texts(media.get("schema", {}))}
    transport = document()["components"]["responses"]["MethodNotAllowed"]
    found |= {(405, text) for text in texts(transport["content"]["application/json"]["schema"])}
    return found


def coded_errors():
    """(status, message text) of every fixed error the server code raises or builds."""
    import ast

    import buttonapi

    tree = ast.parse(Path(buttonapi.__file__).read_text(encoding="utf-8"))
    errors = {(status, text) for status, text in buttonapi.TRANSPORT_ERRORS.items()}
    errors.add((500, buttonapi.INTERNAL_ERROR))

    def text(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name) and isinstance(getattr(buttonapi, node.id, None), str):
            return getattr(buttonapi, node.id)
        return None  # an f-string: `Missing or invalid field: <field>!`, checked per field above

    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        if node.func.id == "ApiError" and isinstance(node.args[0], ast.Constant):
            status, message = node.args[0].value, text(node.args[1])
        elif node.func.id == "too_many":
            status, message = 429, text(node.args[0])
        else:
            continue
        if message is not None:
            errors.add((status, message))
    return errors


def test_every_error_the_code_gives_is_documented():
    coded = coded_errors()
    assert len(coded) >= 30  # the walk found the errors
    assert coded - documented_errors() == set()
