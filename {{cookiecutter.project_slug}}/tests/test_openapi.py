"""The OpenAPI document tells the truth: it is built from the routes, it is valid, it lists every
route and no other, it documents every status the service answers (the generic ones derived from
the URL map, so a new resource is held to them too), and it is served only when configured."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Blueprint, Flask
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from pydantic import BaseModel

import {{ cookiecutter.package_name }} as package
from {{ cookiecutter.package_name }} import __version__
from {{ cookiecutter.package_name }}.access import Access, Declarations
from {{ cookiecutter.package_name }}.api import routes_only
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, mint, parse_network
from {{ cookiecutter.package_name }}.limits import EXEMPT
from {{ cookiecutter.package_name }}.openapi import document, main
from {{ cookiecutter.package_name }}.settings import ConfigError, settings_from
from {{ cookiecutter.package_name }}.shapes import accepts, answers
from {{ cookiecutter.package_name }}.stores import StoreUnavailable

from .support import PROJECT, KeySet, bearer

ROUTES = routes_only()
DOCUMENT: dict[str, Any] = document(ROUTES)
IGNORED_METHODS = {"HEAD", "OPTIONS"}
# What SPEC's status table promises, as the document must show it for each kind of operation.
EVERY_OPERATION = {"400", "500"}
WITH_A_KEY = {"401", "429"}
WITH_A_SCOPE = {"403"}


def operation(method: str, route: str) -> dict[str, Any]:
    found: dict[str, Any] = DOCUMENT["paths"][route][method.lower()]
    return found


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/components/...``) to what it names."""
    while "$ref" in node:
        target: Any = DOCUMENT
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def app_routes(app: Flask) -> set[tuple[str, str]]:
    """(method, OpenAPI path) for every route the app answers, werkzeug converters rewritten."""
    return {
        (method, openapi_path(rule.rule))
        for rule in app.url_map.iter_rules()
        for method in (rule.methods or set()) - IGNORED_METHODS
    }


def document_routes() -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {
        (method.upper(), path)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in methods
    }


def test_document_is_valid_openapi_3_1() -> None:
    validate(DOCUMENT)
    assert DOCUMENT["openapi"].startswith("3.1.")


def test_document_version_is_the_package_version() -> None:
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"]["attr"].endswith(".__version__")
    assert DOCUMENT["info"]["version"] == __version__


def test_document_lists_every_route_and_no_other(make_app: Callable[..., Flask]) -> None:
    """The routes of the service as production runs it: the document does not describe itself,
    because production does not serve it."""
    routes = app_routes(make_app(OPENAPI_ENABLED="false"))
    documented = document_routes()
    assert routes - documented == set(), "routes missing from the document"
    assert documented - routes == set(), "the document lists routes that do not exist"


def test_the_service_and_make_openapi_describe_the_same_routes(make_app: Callable[..., Flask]) -> None:
    assert document(make_app(OPENAPI_ENABLED="false")) == DOCUMENT


def test_make_openapi_writes_the_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # One member a line, indented by two: a change of the routes reads as a small diff.
    expected = json.dumps(DOCUMENT, indent=2) + "\n"
    assert main([]) == 0
    assert capsys.readouterr().out == expected
    written = tmp_path / "new" / "docs" / "openapi.json"
    assert main(["--output", str(written)]) == 0
    assert written.read_text(encoding="utf-8") == expected
    assert [p.name for p in written.parent.iterdir()] == ["openapi.json"]


def test_make_openapi_replaces_the_document_whole_and_takes_over_a_dead_runs_scratch_file(
    tmp_path: Path,
) -> None:
    """A run that died between writing and replacing left its scratch file: the next run writes
    through it and leaves the directory as it should be, the new document alone."""
    written = tmp_path / "openapi.json"
    written.write_text("{}", encoding="utf-8")
    (tmp_path / "openapi.json.partial").write_text('{"half', encoding="utf-8")
    assert main(["--output", str(written)]) == 0
    assert json.loads(written.read_text(encoding="utf-8")) == DOCUMENT
    assert [p.name for p in tmp_path.iterdir()] == ["openapi.json"]


def test_make_openapi_help_names_the_command_and_what_it_prints(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--help"])
    assert stopped.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: python -m {main.__module__} ")
    assert "Print the document of the service's routes" in shown


def test_make_openapi_runs_as_a_module(tmp_path: Path) -> None:
    """What `make openapi` runs, in a process of its own."""
    written = tmp_path / "openapi.json"
    subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}.openapi", "--output", str(written)],
        cwd=PROJECT,
        env={**os.environ, "PYTHONPATH": str(PROJECT / "src")},
        check=True,
        timeout=60,
    )
    assert json.loads(written.read_text(encoding="utf-8")) == DOCUMENT


def test_a_route_added_after_the_start_is_in_the_served_document(make_app: Callable[..., Flask]) -> None:
    app = make_app(OPENAPI_ENABLED="true")
    app.add_url_rule("/test-only/late", "late", lambda: {})
    served = app.test_client().get("/openapi.json").get_json()
    assert served["paths"]["/test-only/late"]["get"]["security"][0]["bearerAuth"] == ["(undeclared)"]


def test_an_operation_is_named_summed_up_and_tagged_from_its_view_and_blueprint(
    make_app: Callable[..., Flask],
) -> None:
    """operationId: the view's name in camelCase; summary: the first line of its docstring less
    the final period, or nothing; tag: its blueprint's full name, "service" outside any."""

    def read_what_is_in_box_x() -> dict[str, str]:
        """Read what is in box X.

        Not in the summary."""
        return {}

    app = make_app(OPENAPI_ENABLED="true")
    app.add_url_rule("/test-only/box", "box", read_what_is_in_box_x)
    app.add_url_rule("/test-only/bare", "bare", lambda: {})
    outer, inner = Blueprint("outer", __name__), Blueprint("inner", __name__)
    inner.add_url_rule("/nested", "nested", read_what_is_in_box_x)
    outer.register_blueprint(inner)
    app.register_blueprint(outer, url_prefix="/test-only")
    paths = app.test_client().get("/openapi.json").get_json()["paths"]
    described = {
        path: (paths[path]["get"]["operationId"], paths[path]["get"]["summary"], paths[path]["get"]["tags"])
        for path in ("/test-only/box", "/test-only/bare", "/test-only/nested")
    }
    assert described == {
        "/test-only/box": ("readWhatIsInBoxX", "Read what is in box X", ["service"]),
        "/test-only/bare": ("<lambda>", "", ["service"]),
        "/test-only/nested": ("readWhatIsInBoxX", "Read what is in box X", ["outer.inner"]),
    }


def test_a_shape_that_holds_another_documents_both(make_app: Callable[..., Flask]) -> None:
    class Part(BaseModel):
        name: str

    class Crate(BaseModel):
        parts: list[Part]

    @accepts(body=Crate)
    def pack(crate: Crate) -> dict[str, str]:
        return {}

    app = make_app(OPENAPI_ENABLED="true")
    app.add_url_rule("/test-only/pack", "pack", pack, methods=["POST"])
    served = app.test_client().get("/openapi.json").get_json()
    validate(served)
    schemas = served["components"]["schemas"]
    assert schemas["Crate"]["properties"]["parts"]["items"] == {"$ref": "#/components/schemas/Part"}
    assert schemas["Part"]["properties"]["name"]["type"] == "string"


def test_what_a_view_declares_is_documented_as_declared(make_app: Callable[..., Flask]) -> None:
    class Filter(BaseModel):
        colour: str
        limit: int = 10

    class Nothing(BaseModel):
        pass

    @answers(400)
    @answers(200)
    @accepts(query=Filter)
    def find(query: Filter, box_id: str) -> dict[str, str]:
        return {}

    @accepts(query=Nothing)
    def nothing(query: Nothing) -> dict[str, str]:
        return {}

    app = make_app(OPENAPI_ENABLED="true")
    app.add_url_rule("/test-only/<box_id>/find", "find", find)
    app.add_url_rule("/test-only/nothing", "nothing", nothing)
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    paths = response.get_json()["paths"]
    found = paths["/test-only/{box_id}/find"]
    path_parameter = {"name": "box_id", "in": "path", "required": True, "schema": {"type": "string"}}
    assert found["parameters"] == [path_parameter]
    operation = found["get"]
    assert {(p["name"], p["in"], p["required"]) for p in operation["parameters"]} == {
        ("colour", "query", True),
        ("limit", "query", False),
    }
    assert operation["responses"]["400"] == {"$ref": "#/components/responses/BadRequest"}
    assert operation["responses"]["200"]["description"] == ""
    assert paths["/test-only/nothing"]["get"]["parameters"] == []


def test_the_title_is_the_project_name_and_the_summary_the_whole_description(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(package, "__doc__", "Widgets API: counts widgets: all of them")
    info = document(ROUTES)["info"]
    assert (info["title"], info["summary"]) == ("Widgets API", "counts widgets: all of them")


def test_both_key_headers_are_security_schemes() -> None:
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyHeader"] == {
        **schemes["apiKeyHeader"],
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }
    assert KEY_PREFIX in schemes["bearerAuth"]["bearerFormat"]


OPERATIONS = sorted(document_routes())


@pytest.mark.parametrize(("method", "route"), OPERATIONS, ids=[f"{m} {r}" for m, r in OPERATIONS])
def test_every_operation_documents_the_statuses_it_can_meet(method: str, route: str) -> None:
    found = operation(method, route)
    security = found.get("security", DOCUMENT["security"])
    expected = set(EVERY_OPERATION)
    if security:
        expected |= WITH_A_KEY
    if any(roles for requirement in security for roles in requirement.values()):
        expected |= WITH_A_SCOPE
    if "requestBody" in found:
        expected |= {"408", "413", "415", "422"}
    if any(parameter["in"] == "query" for parameter in found.get("parameters", ())):
        expected.add("422")
    assert expected <= set(found["responses"])
    for status, response in found["responses"].items():
        if status.startswith(("4", "5")):
            assert set(resolve(response)["content"]) == {"application/problem+json"}, status


@pytest.mark.parametrize(("method", "route"), OPERATIONS, ids=[f"{m} {r}" for m, r in OPERATIONS])
def test_every_operation_documents_its_success(method: str, route: str) -> None:
    """A client generated from the document must know what a success looks like, on every route."""
    assert [status for status in operation(method, route)["responses"] if status.startswith("2")]


def test_challenge_and_quota_headers_are_documented() -> None:
    responses = DOCUMENT["components"]["responses"]
    assert "WWW-Authenticate" in responses["Unauthorized"]["headers"]
    assert set(responses["TooManyRequests"]["headers"]) >= {"Retry-After", "RateLimit-Policy", "RateLimit"}
    assert DOCUMENT["components"]["schemas"]["Problem"]["required"] == ["type", "title", "status"]
    assert not [name for name in DOCUMENT["components"]["headers"] if name.startswith("X-RateLimit")]


@pytest.mark.parametrize(("method", "route"), OPERATIONS, ids=[f"{m} {r}" for m, r in OPERATIONS])
def test_retry_after_is_documented_only_with_429_and_503(method: str, route: str) -> None:
    for status, response in operation(method, route)["responses"].items():
        assert ("Retry-After" in resolve(response).get("headers", {})) == (status in ("429", "503")), status


@pytest.mark.parametrize(
    ("app_env", "expected"), [("production", False), ("test", False), ("development", True)]
)
def test_document_is_served_by_default_only_in_development(
    env: dict[str, str], app_env: str, expected: bool
) -> None:
    # production refuses plain HTTP unless a proxy is named.
    settings = settings_from({**env, "APP_ENV": app_env, "FORWARDED_ALLOW_IPS": "10.0.0.1"})
    assert settings.openapi_enabled is expected


def test_openapi_enabled_must_be_a_flag(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="OPENAPI_ENABLED"):
        settings_from({**env, "OPENAPI_ENABLED": "sometimes"})


def test_document_is_served_without_a_key_when_enabled(make_app: Callable[..., Flask]) -> None:
    client = make_app(OPENAPI_ENABLED="true", RATELIMIT_DEFAULT="1 per hour").test_client()
    responses = [client.get("/openapi.json") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]  # not rate limited
    assert responses[0].content_type == "application/json"
    assert responses[0].get_json() == DOCUMENT


def test_document_is_not_found_when_disabled(make_app: Callable[..., Flask]) -> None:
    response = make_app(OPENAPI_ENABLED="false").test_client().get("/openapi.json")
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"


def check_against_the_document(response: Any, method: str, route: str, status: int) -> None:
    """The answer is documented for its route, with its media type, required headers and body."""
    assert response.status_code == status
    documented = operation(method, route)["responses"]
    assert str(status) in documented, f"{status} is not documented for {method} {route}"
    expected = resolve(documented[str(status)])
    media_type = response.content_type.split(";")[0]
    assert media_type in expected["content"]
    for name, header in expected.get("headers", {}).items():
        if resolve(header).get("required"):
            assert name in response.headers, name
    schema = expected["content"][media_type]["schema"]
    if media_type.endswith("json"):
        OAS31Validator({**schema, "components": DOCUMENT["components"]}).validate(response.get_json())


# --- the generic answers, derived from the URL map: every route, and every route a team adds ----


def generic_cases() -> list[tuple[str, str, str]]:
    """(case, method, OpenAPI path) for each answer the gate gives to the route's declaration."""
    declarations = Declarations(ROUTES)
    cases = []
    for rule in sorted(ROUTES.url_map.iter_rules(), key=lambda rule: rule.rule):
        access = declarations.of(rule.endpoint)
        assert access is not None, rule.endpoint
        exempt = getattr(ROUTES.view_functions[rule.endpoint], EXEMPT, False)
        for method in sorted((rule.methods or set()) - IGNORED_METHODS):
            route = openapi_path(rule.rule)
            cases.append(("key in the URL", method, route))
            if not access.public:
                cases.append(("no key", method, route))
                cases.append(("unknown key", method, route))
                if access.scope(method) is not None:
                    cases.append(("no scope", method, route))
            if not exempt:
                cases.append(("over a budget", method, route))
    return cases


GENERIC = generic_cases()
# A key with a scope no route needs, and one with every scope a route needs.
UNSCOPED = mint(KEY_PREFIX, key_id="unscoped", scopes=["nothing:at-all"], tenant="acme")
EVERY_SCOPE = mint(
    KEY_PREFIX,
    key_id="everything",
    tenant="acme",
    scopes={
        scope
        for rule in ROUTES.url_map.iter_rules()
        for access in [Declarations(ROUTES).of(rule.endpoint) or Access()]
        for scope in (access.read, access.write)
        if scope is not None
    },
)


@pytest.mark.parametrize(("case", "method", "route"), GENERIC, ids=[" ".join(c) for c in GENERIC])
def test_every_route_documents_its_generic_answers(
    make_app: Callable[..., Flask], keys: KeySet, case: str, method: str, route: str
) -> None:
    app = make_app(
        API_KEYS=f"{keys.entries},{UNSCOPED.entry},{EVERY_SCOPE.entry}",
        RATELIMIT_TENANT="1 per hour",
        RATELIMIT_AUTH_FAILURES="1 per hour",
    )
    client = app.test_client()
    url = re.sub(r"\{[^}]+\}", "x", route)
    public = not operation(method, route)["security"]
    headers = {} if public else bearer(EVERY_SCOPE)
    if case == "key in the URL":
        response, status = client.open(f"{url}?api_key=x", method=method, headers=headers), 400
    elif case == "no key":
        response, status = client.open(url, method=method), 401
    elif case == "unknown key":
        response, status = client.open(url, method=method, headers=bearer(keys.unconfigured)), 401
    elif case == "no scope":
        response, status = client.open(url, method=method, headers=bearer(UNSCOPED)), 403
    else:  # a tenant's budget spans every route; an address's failures every public one
        client.get("/v1/whoami", headers=headers) if not public else client.get("/v1/whoami")
        response, status = client.open(url, method=method, headers=headers), 429
    check_against_the_document(response, method, route, status)


# --- the answers of the reference resource, each checked against the document -------------------


@dataclass(frozen=True)
class Case:
    """One request and the status the service answers; ``{item_id}`` is an item of tenant acme."""

    method: str
    url: str
    status: int
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    repeat: int = 1
    store_fails: type[Exception] | None = None

    @property
    def route(self) -> str:
        return self.url.partition("?")[0]


ITEM = "/v1/items/{item_id}"
NOT_A_KEY = {"Authorization": f"Bearer {KEY_PREFIX}_not-a-key"}
WRITE = {"json": {"name": "sprocket"}}
ONE_PER_HOUR = {"RATELIMIT_DEFAULT": "1 per hour"}
# The test client's address, 127.0.0.1, is outside this key's networks.
FENCED = mint(KEY_PREFIX, key_id="fenced", scopes=["items:read"], nets=[parse_network("192.0.2.0/24")])
CASES = {
    "health": Case("GET", "/healthz", 200),
    "whoami": Case("GET", "/v1/whoami", 200, "reader"),
    "list": Case("GET", "/v1/items", 200, "reader"),
    "create": Case("POST", "/v1/items", 201, "writer", body=WRITE),
    "fetch": Case("GET", ITEM, 200, "reader"),
    "no key": Case("GET", "/v1/whoami", 401),
    "malformed key": Case("GET", "/v1/items", 401, headers=NOT_A_KEY),
    "unknown key": Case("GET", ITEM, 401, "unconfigured"),
    "expired key": Case("POST", "/v1/items", 401, "expired", body=WRITE),
    "key in URL, any case": Case("GET", "/healthz?API_KEY=x", 400),
    "key in URL, another name": Case("GET", "/v1/whoami?access_token=x", 400, "reader"),
    "key in URL, create": Case("POST", "/v1/items?api_key=x", 400, "writer", body=WRITE),
    "key in URL, fetch": Case("GET", ITEM + "?Api_Key=x", 400, "reader"),
    "no scope, list": Case("GET", "/v1/items", 403, "no_scopes"),
    "no scope, create": Case("POST", "/v1/items", 403, "reader", body=WRITE),
    "no scope, fetch": Case("GET", ITEM, 403, "no_scopes"),
    "outside its networks, whoami": Case(
        "GET", "/v1/whoami", 401, headers=bearer(FENCED), env={"API_KEYS": FENCED.entry}
    ),
    "other tenant": Case("GET", ITEM, 404, "other_tenant"),
    "body too large": Case(
        "POST",
        "/v1/items",
        413,
        "writer",
        body={"json": {"name": "x" * 2048}},
        env={"MAX_CONTENT_LENGTH": "1024"},
    ),
    "not JSON": Case("POST", "/v1/items", 415, "writer", body={"data": "name=x"}),
    "broken JSON": Case(
        "POST", "/v1/items", 400, "writer", body={"data": "{", "content_type": "application/json"}
    ),
    "invalid item": Case("POST", "/v1/items", 422, "writer", body={"json": {"name": ""}}),
    "nested JSON": Case(
        "POST", "/v1/items", 400, "writer", body={"data": "[" * 5000, "content_type": "application/json"}
    ),
    "over the limit, whoami": Case("GET", "/v1/whoami", 429, "reader", env=ONE_PER_HOUR, repeat=2),
    "over the limit, fetch": Case("GET", ITEM, 429, "reader", env=ONE_PER_HOUR, repeat=2),
    "too many failures, create": Case(
        "POST", "/v1/items", 429, body=WRITE, env={"RATELIMIT_AUTH_FAILURES": "1 per hour"}, repeat=2
    ),
    "store fails, list": Case("GET", "/v1/items", 500, "reader", store_fails=RuntimeError),
    "store fails, fetch": Case("GET", ITEM, 500, "reader", store_fails=RuntimeError),
    "database unavailable, list": Case("GET", "/v1/items", 503, "reader", store_fails=StoreUnavailable),
    "database unavailable, create": Case(
        "POST", "/v1/items", 503, "writer", body=WRITE, store_fails=StoreUnavailable
    ),
    "database unavailable, fetch": Case("GET", ITEM, 503, "reader", store_fails=StoreUnavailable),
}


class BrokenStore:
    """Every call fails: with a bug (RuntimeError), or as an unreachable database would."""

    def __init__(self, failure: type[Exception]) -> None:
        self.failure = failure

    def __getattr__(self, name: str) -> Callable[..., None]:
        def fail(*args: object, **kwargs: object) -> None:
            raise self.failure(1) if self.failure is StoreUnavailable else self.failure("database is gone")

        return fail


def answer(make_app: Callable[..., Flask], keys: KeySet, case: Case) -> Any:
    app = make_app(**case.env)
    item = app.extensions["stores"]["items"].add("acme", "widget")
    if case.store_fails is not None:
        app.extensions["stores"]["items"] = BrokenStore(case.store_fails)
    headers = dict(case.headers)
    if case.key is not None:
        headers.update(bearer(getattr(keys, case.key)))
    client = app.test_client()
    url = case.url.replace("{item_id}", item.id)
    for _ in range(case.repeat):
        response = client.open(url, method=case.method, headers=headers, **case.body)
    return response


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_every_status_the_items_answer_is_documented(
    make_app: Callable[..., Flask], keys: KeySet, case: Case
) -> None:
    check_against_the_document(answer(make_app, keys, case), case.method, case.route, case.status)
