"""static/openapi.json as a test oracle: every answer the tests see must be one it documents.

`check_response` is called by helpers.py's `answer` and `http`, so every response of the
test suite is held against the document: its status must be listed for that path and method,
its JSON body must match that status's schema, and its documented headers must be there. A
path the document does not list must be the transport 404, a method it does not list the 405.
Validation uses JSON Schema 2020-12, the dialect of OpenAPI 3.1, through `jsonschema`.
"""

import json
import re
from functools import cache
from pathlib import Path

import jsonschema
import referencing
import referencing.jsonschema

DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "static" / "openapi.json"
DOCUMENT_URI = "urn:buttonapi:openapi.json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@cache
def document() -> dict:
    return json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))


def pointer(*parts: str) -> str:
    """A JSON pointer fragment (`#/a/b~1c`) to the given keys."""
    return "#" + "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def lookup(ref: str):
    """The value a document-local `$ref` (`#/...`) points to."""
    node = document()
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def follow(ref_pointer: str) -> tuple[str, dict]:
    """Follow OpenAPI `$ref`s (responses, headers) from a pointer to the object they name."""
    node = lookup(ref_pointer)
    while "$ref" in node:
        ref_pointer = node["$ref"]
        node = lookup(ref_pointer)
    return ref_pointer, node


@cache
def _registry() -> referencing.Registry:
    resource = referencing.Resource.from_contents(
        document(), default_specification=referencing.jsonschema.DRAFT202012
    )
    return referencing.Registry().with_resource(DOCUMENT_URI, resource)


@cache
def validator(schema_pointer: str) -> jsonschema.Draft202012Validator:
    """A validator for the schema at a pointer; its `$ref`s resolve inside the document."""
    return jsonschema.Draft202012Validator(
        {"$ref": DOCUMENT_URI + schema_pointer}, registry=_registry()
    )


def documented_path(path: str) -> str | None:
    """The document's key for a request path; the API answers without the trailing slash too."""
    paths = document()["paths"]
    for candidate in (path, path + "/"):
        if candidate in paths:
            return candidate
    for template in paths:  # `/static/{name}`
        if "{" in template and re.fullmatch(_template_pattern(template), path):
            return template
    return None


@cache
def _template_pattern(template: str) -> str:
    return re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template))


def response_pointer(method: str, path: str, status: int) -> str:
    """The pointer to the response object the document gives for this answer, or fail."""
    route = documented_path(path)
    if route is None:
        assert status == 404, f"{method} {path}: an undocumented path answered {status}, not 404"
        return pointer("components", "responses", "NotFound")
    operation = document()["paths"][route].get(method.lower())
    if operation is None:
        assert status == 405, f"{method} {route}: an undocumented method answered {status}"
        return pointer("components", "responses", "MethodNotAllowed")
    assert str(status) in operation["responses"], (
        f"{method} {route} answered {status}, which the OpenAPI document does not list "
        f"(it lists {sorted(operation['responses'])})"
    )
    return pointer("paths", route, method.lower(), "responses", str(status))


def _header_value(schema: dict, value: str):
    if schema.get("type") == "integer" and value.isascii() and value.isdigit():
        return int(value)
    return value


def check_response(method: str, path: str, status: int, headers, body) -> None:
    """Fail unless the document lists this answer and its body and headers match it."""
    where, response = follow(response_pointer(method, path, status))
    label = f"{method} {path} -> {status}"
    assert "application/json" in response["content"], f"{label}: documented as not JSON"
    schema_at = where + pointer("content", "application/json", "schema")[1:]
    errors = sorted(validator(schema_at).iter_errors(body), key=lambda e: e.path)
    assert not errors, f"{label}: the body {body!r} does not match the OpenAPI document: " + (
        "; ".join(e.message for e in errors)
    )
    for name, header in response.get("headers", {}).items():
        header_at = where + pointer("headers", name)[1:]
        header_at, header = follow(header_at)
        value = headers.get(name)
        if value is None:
            assert not header.get("required"), f"{label}: the {name} header is missing"
            continue
        schema_at = header_at + pointer("schema")[1:]
        errors = list(validator(schema_at).iter_errors(_header_value(header["schema"], value)))
        assert not errors, f"{label}: header {name}: {value!r}: " + errors[0].message
