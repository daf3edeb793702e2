"""The OpenAPI 3.1 document, built from the routes themselves (their access declarations, their
shapes, their limits), so that it cannot drift from what the service does: no hand-kept file.

apispec assembles the document; pydantic writes each shape's JSON Schema, which is the schema
dialect of OpenAPI 3.1. ``make openapi`` (``python -m <package>.openapi``) writes it to
``docs/openapi.json`` for review in a diff; ``GET /openapi.json`` serves it when
OPENAPI_ENABLED says so.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from apispec import APISpec
from flask import Flask
from pydantic import BaseModel
from werkzeug.routing import Rule

from .access import Access, Declarations
from .keys import BODY_LENGTH, CHECKSUM_LENGTH, KEY_PREFIX
from .limits import EXEMPT
from .shapes import Answer, accepted, answered

PACKAGE = str(__package__)
# The document does not describe itself: production does not serve it.
OWN_ENDPOINT = "openapi.openapi_json"
IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
PARAMETER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
QUOTA = ("RateLimit-Policy", "RateLimit")
CLOSED = Access(read="(undeclared)", write="(undeclared)")

DESCRIPTION = (
    "Every route declares who may call it: no one without a key but the public ones (`security: []`)."
    " A key is sent as `Authorization: Bearer <key>` or `X-API-Key: <key>` (both present and"
    " different: 401). A key in the URL (`api_key`, `apikey`, `api-key`, `access_token`, any letter"
    " case) is refused with 400 on every route and never used.\n\n"
    "Every error is `application/problem+json` (RFC 9457). Besides the statuses listed per"
    " operation, an unknown path answers 404, and a method a path does not offer answers 405 with"
    " an `Allow` header to a caller with a valid key (401 to others), both as problem+json; more"
    " than RATELIMIT_UNMATCHED of those from one address answer 429.\n\n"
    "Rate limits are counted per key id, and per client address for requests without a valid key;"
    " responses carry the remaining quota and its reset time."
)
HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The request id, also in the problem body and the log line.",
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying. Sent with 429 and 503 only.",
        "required": True,
        "schema": {"type": "integer"},
    },
    "WWW-Authenticate": {
        "description": "The authentication challenge, always the same.",
        "required": True,
        "schema": {"type": "string", "const": 'Bearer realm="api"'},
    },
    "RateLimit-Policy": {
        "description": (
            "The quota policies that apply (draft-ietf-httpapi-ratelimit-headers): a name, q requests"
            ' per w seconds, e.g. `"default";q=100;w=60`. Counted per key id, or per client address'
            " without a valid key."
        ),
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": (
            "The state of the most relevant policy: its name, r requests remaining and t seconds"
            ' until the window resets, e.g. `"default";r=99;t=42`.'
        ),
        "schema": {"type": "string"},
    },
}
# status: (component name, description, extra headers)
PROBLEMS: dict[int, tuple[str, str, tuple[str, ...]]] = {
    400: (
        "BadRequest",
        "An API key in the URL (refused, never used), or a body that is not JSON text: malformed,"
        " nested too deeply, or holding a lone surrogate.",
        (),
    ),
    401: (
        "Unauthorized",
        "No key, a malformed, unknown, expired or revoked key, two different keys, or a key used"
        " from outside the networks its entry names; always the same body.",
        ("WWW-Authenticate",),
    ),
    403: (
        "Forbidden",
        "The key lacks the scope this operation needs; in production, also a key that did not arrive"
        " over HTTPS (a plain-HTTP request that did not come through the TLS-terminating proxy, or"
        " that the proxy took in cleartext).",
        (),
    ),
    404: ("NotFound", "No such resource for the caller's tenant.", ()),
    408: ("RequestTimeout", "The body was still arriving 10 seconds after the service began to read it.", ()),
    413: ("ContentTooLarge", "The body is larger than MAX_CONTENT_LENGTH.", ()),
    415: ("UnsupportedMediaType", "The body is not application/json.", ()),
    422: (
        "UnprocessableContent",
        "The body or the query does not match its schema; `errors` lists each field at fault.",
        (),
    ),
    429: (
        "TooManyRequests",
        "Over a rate limit: per key id, per tenant, per client address for requests without a valid"
        " key, or too many failed authentications from the address. Retry-After says when to try again.",
        ("Retry-After", *QUOTA),
    ),
    500: (
        "InternalServerError",
        "An unexpected error; the body says nothing about it. Quote the request_id when reporting it.",
        (),
    ),
    503: (
        "ServiceUnavailable",
        "The database did not answer in time (down, unreachable or too slow). Retry-After says when"
        " to try again. Routes that need no database keep working.",
        ("Retry-After",),
    ),
}
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; never echoes a key, a trace or a server path.",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "format": "uri-reference", "examples": ["about:blank"]},
        "title": {"type": "string", "examples": ["Unauthorized"]},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "request_id": {"type": ["string", "null"]},
        "errors": {
            "type": "array",
            "description": "422 only: each field at fault, as a JSON pointer into the body (or a"
            " query parameter's name), and what is wrong with it; never the value sent.",
            "items": {
                "type": "object",
                "required": ["pointer", "in", "detail"],
                "properties": {
                    "pointer": {"type": "string"},
                    "in": {"enum": ["body", "query"]},
                    "detail": {"type": "string"},
                },
            },
        },
    },
}
SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": f"{KEY_PREFIX}_ followed by {BODY_LENGTH + CHECKSUM_LENGTH} base62 characters",
        "description": (
            f"`Authorization: Bearer <key>`. Keys are minted with `python -m {PACKAGE}.keys new`."
            " The role names in a security requirement are the scopes the key needs."
        ),
    },
    "apiKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The same key in `X-API-Key: <key>`, for clients that cannot set Authorization.",
    },
}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0].rstrip(".")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


class Builder:
    """One document: components shared by every operation, then one operation per route and method."""

    def __init__(self, app: Flask) -> None:
        package = importlib.import_module(PACKAGE)
        # The package's docstring is "<project name>: <one sentence>".
        title, _, summary = (package.__doc__ or PACKAGE).partition(": ")
        self.spec = APISpec(
            title=title.strip(),
            version=package.__version__,
            openapi_version="3.1.0",
            info={"summary": summary.strip(), "description": DESCRIPTION},
            security=[{"bearerAuth": []}, {"apiKeyHeader": []}],
        )
        self.declarations = Declarations(app)
        self.app = app
        self.tags: set[str] = set()
        components = self.spec.components
        for name, scheme in SECURITY_SCHEMES.items():
            components.security_scheme(name, scheme)
        for name, header in HEADERS.items():
            components.header(name, header)
        components.schema("Problem", PROBLEM_SCHEMA)
        for name, description, headers in PROBLEMS.values():
            components.response(
                name,
                {
                    "description": description,
                    "headers": {header: _ref("headers", header) for header in ("X-Request-ID", *headers)},
                    "content": {"application/problem+json": {"schema": _ref("schemas", "Problem")}},
                },
            )

    def _schema(self, model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, nested in schema.pop("$defs", {}).items():
            if name not in self.spec.components.schemas:
                self.spec.components.schema(name, nested)
        if model.__name__ not in self.spec.components.schemas:
            self.spec.components.schema(model.__name__, schema)
        return _ref("schemas", model.__name__)

    def _tag(self, rule: Rule, view: Any) -> str:
        name = rule.endpoint.rpartition(".")[0] or "service"
        if name not in self.tags:
            self.tags.add(name)
            self.spec.tag({"name": name, "description": _first_line(sys.modules[view.__module__].__doc__)})
        return name

    def operation(self, rule: Rule, method: str) -> dict[str, Any]:
        view = self.app.view_functions[rule.endpoint]
        # A route registered after the start's check, undeclared: closed to every key.
        access = self.declarations.of(rule.endpoint) or CLOSED
        limited = not getattr(view, EXEMPT, False)
        shapes = accepted(view)
        found: dict[str, Any] = {
            "operationId": _camel(view.__name__),
            "tags": [self._tag(rule, view)],
            "summary": _first_line(view.__doc__),
            "security": _security(access, method),
            "responses": self._responses(
                answered(view), access, limited, body=shapes.body is not None, query=shapes.query is not None
            ),
        }
        if shapes.body is not None:
            content = {"application/json": {"schema": self._schema(shapes.body)}}
            found["requestBody"] = {"required": True, "content": content}
        if shapes.query is not None:
            found["parameters"] = list(_query_parameters(shapes.query))
        return found

    def _responses(
        self, answers: tuple[Answer, ...], access: Access, limited: bool, *, body: bool, query: bool
    ) -> dict[str, Any]:
        statuses = {400, 500}
        if not access.public:
            statuses |= {401, 403}
        if limited:
            statuses.add(429)
        if body:
            statuses |= {408, 413, 415, 422}
        if query:
            statuses.add(422)
        responses: dict[str, Any] = {
            str(status): _ref("responses", PROBLEMS[status][0]) for status in statuses
        }
        for answer in answers:
            if answer.status >= 400:
                responses[str(answer.status)] = _ref("responses", PROBLEMS[answer.status][0])
                continue
            headers = ("X-Request-ID", *QUOTA) if limited else ("X-Request-ID",)
            content = (
                {"application/json": {"schema": self._schema(answer.model)}}
                if answer.model is not None
                else {"text/plain": {"schema": {"type": "string"}}}
            )
            responses[str(answer.status)] = {
                "description": answer.description or "",
                "headers": {header: _ref("headers", header) for header in headers},
                "content": content,
            }
        return dict(sorted(responses.items()))

    def build(self) -> dict[str, Any]:
        for rule in sorted(self.app.url_map.iter_rules(), key=lambda rule: rule.rule):
            if rule.endpoint == OWN_ENDPOINT:
                continue
            path = PARAMETER.sub(r"{\1}", rule.rule)
            methods = sorted((rule.methods or set()) - IGNORED_METHODS)
            operations = {method.lower(): self.operation(rule, method) for method in methods}
            self.spec.path(path=path, operations=operations, parameters=list(_path_parameters(rule)))
        return self.spec.to_dict()


def _security(access: Access, method: str) -> list[dict[str, list[str]]]:
    if access.public:
        return []
    scope = access.scope(method)
    roles = [] if scope is None else [scope]
    return [{"bearerAuth": roles}, {"apiKeyHeader": roles}]


def _path_parameters(rule: Rule) -> Iterator[dict[str, Any]]:
    for name in rule.arguments:
        # apispec marks every path parameter required, as OpenAPI demands.
        yield {"name": name, "in": "path", "schema": {"type": "string"}}


def _query_parameters(model: type[BaseModel]) -> Iterator[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    for name, field in schema["properties"].items():
        parameter = {"name": name, "in": "query", "required": name in required, "schema": field}
        if "description" in field:
            parameter["description"] = field["description"]
        yield parameter


def document(app: Flask) -> dict[str, Any]:
    """The document of ``app``'s routes as they are now."""
    return Builder(app).build()


def main(argv: Sequence[str] | None = None) -> int:
    """Print the document of the service's routes, or write it where ``--output`` says."""
    from .api import routes_only

    parser = argparse.ArgumentParser(prog=f"python -m {PACKAGE}.openapi", description=main.__doc__)
    parser.add_argument(
        "--output", type=Path, help="write the document here (replaced whole, never half-written)"
    )
    args = parser.parse_args(argv)
    text = json.dumps(document(routes_only()), indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    scratch = args.output.with_name(args.output.name + ".partial")
    scratch.write_text(text, encoding="utf-8")
    scratch.replace(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
