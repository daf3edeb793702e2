"""Authentication and authorization: the status table of the contract, and hostile input."""

from __future__ import annotations

import logging

import pytest
from flask import Blueprint, Flask
from flask.testing import FlaskClient

from {{ cookiecutter.package_name }} import requestlog
from {{ cookiecutter.package_name }}.access import Declarations, UndeclaredRoute, guard, public, requires
from {{ cookiecutter.package_name }}.api import BLUEPRINTS
from {{ cookiecutter.package_name }}.auth import current_caller
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, MintedKey, mint, parse_network

from .support import KeySet, bearer

UNAUTHORIZED_BODY_KEYS = {"type", "title", "status", "detail", "request_id"}


def assert_generic_401(response) -> None:
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response.content_type == "application/problem+json"
    body = response.get_json()
    assert set(body) == UNAUTHORIZED_BODY_KEYS
    assert (body["title"], body["detail"]) == ("Unauthorized", "A valid API key is required.")


def test_valid_key_in_authorization_header_is_accepted(client: FlaskClient, keys: KeySet) -> None:
    response = client.get("/v1/whoami", headers=bearer(keys.writer))
    assert response.status_code == 200
    assert response.get_json() == {
        "key_id": "writer",
        "tenant": "acme",
        "scopes": ["items:read", "items:write"],
    }


def test_valid_key_in_x_api_key_header_is_accepted(client: FlaskClient, keys: KeySet) -> None:
    response = client.get("/v1/whoami", headers={"X-API-Key": keys.reader.secret})
    assert response.get_json()["key_id"] == "reader"


def test_bearer_may_be_followed_by_several_spaces(client: FlaskClient, keys: KeySet) -> None:
    # RFC 6750: "Bearer" 1*SP b64token.
    response = client.get("/v1/whoami", headers={"Authorization": f"Bearer   {keys.reader.secret}"})
    assert response.status_code == 200


def test_bearer_scheme_is_case_insensitive(client: FlaskClient, keys: KeySet) -> None:
    response = client.get("/v1/whoami", headers={"Authorization": f"bearer {keys.reader.secret}"})
    assert response.status_code == 200


def test_same_key_in_both_headers_is_accepted(client: FlaskClient, keys: KeySet) -> None:
    headers = {**bearer(keys.reader), "X-API-Key": keys.reader.secret}
    assert client.get("/v1/whoami", headers=headers).status_code == 200


def test_two_different_keys_are_refused(client: FlaskClient, keys: KeySet) -> None:
    headers = {**bearer(keys.reader), "X-API-Key": keys.writer.secret}
    assert_generic_401(client.get("/v1/whoami", headers=headers))


@pytest.mark.parametrize(
    "case", ["missing", "malformed", "unknown", "expired", "basic-scheme", "empty-bearer"]
)
def test_every_authentication_failure_gets_the_same_401(client: FlaskClient, keys: KeySet, case: str) -> None:
    headers = {
        "missing": {},
        "malformed": {"X-API-Key": keys.reader.secret[:-1] + ("x" if keys.reader.secret[-1] != "x" else "y")},
        "unknown": bearer(keys.unconfigured),
        "expired": bearer(keys.expired),
        "basic-scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
        "empty-bearer": {"Authorization": "Bearer "},
    }[case]
    response = client.get("/v1/items", headers=headers)
    assert_generic_401(response)
    body = response.get_json()
    del body["request_id"]
    reference = client.get("/v1/items").get_json()
    del reference["request_id"]
    assert body == reference


@pytest.mark.parametrize(
    "value",
    ["ключ-" * 10, "\xff\xfe\xfd" * 20, "A" * 8192, "Bearer \x00\x01\x7f", "k\tey\r", " "],
    ids=["non-ascii", "not-utf8", "8kb", "control-chars", "tabs", "blank"],
)
@pytest.mark.parametrize("header", ["HTTP_AUTHORIZATION", "HTTP_X_API_KEY"])
def test_hostile_header_values_get_401_never_500(client: FlaskClient, header: str, value: str) -> None:
    # environ values are latin-1 text, exactly as a WSGI server passes arbitrary bytes.
    if header == "HTTP_AUTHORIZATION" and not value.startswith("Bearer"):
        value = f"Bearer {value}"
    response = client.get("/v1/whoami", environ_overrides={header: value})
    assert_generic_401(response)


@pytest.mark.parametrize(
    "parameter", ["api_key", "apikey", "api-key", "access_token", "API_KEY", "Access_Token"]
)
def test_key_in_the_url_is_refused_and_never_used(client: FlaskClient, keys: KeySet, parameter: str) -> None:
    response = client.get(f"/v1/whoami?{parameter}={keys.reader.secret}")
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    assert keys.reader.secret not in response.get_data(as_text=True)


def test_key_in_the_url_is_refused_even_beside_a_valid_header(client: FlaskClient, keys: KeySet) -> None:
    response = client.get(f"/v1/whoami?api_key={keys.reader.secret}", headers=bearer(keys.reader))
    assert response.status_code == 400


def test_missing_scope_is_403(client: FlaskClient, keys: KeySet) -> None:
    response = client.get("/v1/items", headers=bearer(keys.no_scopes))
    assert response.status_code == 403
    assert response.get_json()["title"] == "Forbidden"


def test_write_needs_the_write_scope(client: FlaskClient, keys: KeySet) -> None:
    response = client.post("/v1/items", headers=bearer(keys.reader), json={"name": "x"})
    assert response.status_code == 403


def test_whoami_needs_any_valid_key_but_no_scope(client: FlaskClient, keys: KeySet) -> None:
    assert client.get("/v1/whoami", headers=bearer(keys.no_scopes)).status_code == 200


def test_health_needs_no_key(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_rotation_old_and_new_keys_work_until_the_old_entry_is_removed(make_app, keys: KeySet) -> None:
    both = make_app(API_KEYS=f"{keys.reader.entry},{keys.writer.entry}").test_client()
    assert both.get("/v1/whoami", headers=bearer(keys.reader)).status_code == 200
    assert both.get("/v1/whoami", headers=bearer(keys.writer)).status_code == 200
    rotated = make_app(API_KEYS=keys.writer.entry).test_client()
    assert rotated.get("/v1/whoami", headers=bearer(keys.writer)).status_code == 200
    assert_generic_401(rotated.get("/v1/whoami", headers=bearer(keys.reader)))


def test_views_see_the_caller_on_g(app: Flask, keys: KeySet) -> None:
    with app.test_request_context("/v1/whoami", headers=bearer(keys.writer)):
        app.preprocess_request()
        from flask import g

        assert (g.caller.key_id, g.caller.tenant) == ("writer", "acme")


# --- networks: where a valid key may be used from --------------------------------------------


def with_networks(nets: str) -> MintedKey:
    return mint(
        KEY_PREFIX,
        key_id="fenced",
        scopes=["items:read"],
        tenant="acme",
        nets=map(parse_network, nets.split("+")),
    )


def from_address(address: str) -> dict[str, dict[str, str]]:
    return {"environ_overrides": {"REMOTE_ADDR": address}}


def test_a_key_outside_its_networks_gets_the_same_401_as_an_unknown_key(make_app, keys: KeySet) -> None:
    """A 403 would tell whoever stole the key that it still works, only not from there."""
    fenced = with_networks("192.0.2.0/24")
    client = make_app(API_KEYS=f"{keys.entries},{fenced.entry}").test_client()
    outside = client.get("/v1/items", headers=bearer(fenced), **from_address("198.51.100.7"))
    unknown = client.get("/v1/items", headers=bearer(keys.unconfigured), **from_address("198.51.100.7"))
    assert_generic_401(outside)
    assert outside.headers["WWW-Authenticate"] == unknown.headers["WWW-Authenticate"]
    body, other = outside.get_json(), unknown.get_json()
    assert {**body, "request_id": None} == {**other, "request_id": None}
    assert client.get("/v1/whoami", headers=bearer(fenced), **from_address("198.51.100.7")).status_code == 401


@pytest.mark.parametrize("address", ["192.0.2.7", "::ffff:192.0.2.7", "2001:db8:5::1"])
def test_a_key_inside_its_networks_is_accepted(make_app, keys: KeySet, address: str) -> None:
    fenced = with_networks("192.0.2.0/24+2001:db8::/32")
    client = make_app(API_KEYS=f"{keys.entries},{fenced.entry}").test_client()
    response = client.get("/v1/whoami", headers=bearer(fenced), **from_address(address))
    assert response.status_code == 200
    assert response.get_json()["key_id"] == "fenced"


def test_networks_are_checked_against_the_address_a_trusted_proxy_reports(make_app, keys: KeySet) -> None:
    fenced = with_networks("192.0.2.0/24")
    client = make_app(API_KEYS=fenced.entry, FORWARDED_ALLOW_IPS="10.0.0.1").test_client()
    forwarded = {"X-Forwarded-For": "192.0.2.7", "X-Forwarded-Proto": "https", **bearer(fenced)}
    assert client.get("/v1/whoami", headers=forwarded, **from_address("10.0.0.1")).status_code == 200
    proxy_itself = bearer(fenced)
    assert client.get("/v1/whoami", headers=proxy_itself, **from_address("10.0.0.1")).status_code == 401


def test_a_forwarded_header_from_an_untrusted_peer_cannot_move_a_key_inside_its_networks(
    make_app, keys: KeySet
) -> None:
    fenced = with_networks("192.0.2.0/24")
    client = make_app(API_KEYS=fenced.entry, FORWARDED_ALLOW_IPS="10.0.0.1").test_client()
    spoofed = {"X-Forwarded-For": "192.0.2.7", "X-Real-IP": "192.0.2.7", "Forwarded": "for=192.0.2.7"}
    response = client.get("/v1/whoami", headers={**spoofed, **bearer(fenced)}, **from_address("198.51.100.7"))
    assert response.status_code == 401


def test_a_key_used_from_outside_its_networks_is_logged_with_its_id_and_reason(
    make_app, keys: KeySet, caplog: pytest.LogCaptureFixture
) -> None:
    fenced = with_networks("192.0.2.0/24")
    client = make_app(API_KEYS=fenced.entry).test_client()
    with caplog.at_level(logging.INFO, logger=requestlog.__name__):
        client.get("/v1/whoami", headers=bearer(fenced), **from_address("198.51.100.7"))
    (record,) = [r for r in caplog.records if r.name == requestlog.__name__]
    assert (record.key_id, record.auth_failure, record.remote_addr) == (
        "fenced",
        "outside_networks",
        "198.51.100.7",
    )
    assert record.status == 401


@pytest.fixture
def behind_a_proxy(make_app) -> FlaskClient:
    """Production behind a named proxy. Built before the test runs, so that the app's logging
    is configured before pytest attaches its log capture to the root logger."""
    return make_app(APP_ENV="production", FORWARDED_ALLOW_IPS="10.255.255.1").test_client()


def test_a_key_over_plain_http_is_refused_in_production_with_the_reason(
    behind_a_proxy: FlaskClient, keys: KeySet, caplog: pytest.LogCaptureFixture
) -> None:
    """A request that did not arrive over HTTPS: the key crossed a network in cleartext. 403 says
    so, where a 401 would send the client hunting, and the request line says so too: the key
    was exposed and may need retiring."""
    client = behind_a_proxy
    with caplog.at_level(logging.INFO, logger=requestlog.__name__):
        response = client.get("/v1/whoami", headers=bearer(keys.reader))
    assert response.status_code == 403
    assert response.get_json()["detail"] == (
        "API keys are accepted over HTTPS only: connect through the TLS-terminating proxy."
    )
    (line,) = [r for r in caplog.records if r.name == requestlog.__name__]
    assert line.auth_failure == "insecure_transport"
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("headers", "reason"),
    [({}, "missing"), ({"Authorization": "Basic eDp5"}, "malformed")],
    ids=["no-key", "other-scheme"],
)
def test_the_request_line_says_why_authentication_failed(
    client: FlaskClient, caplog: pytest.LogCaptureFixture, headers: dict[str, str], reason: str
) -> None:
    with caplog.at_level(logging.INFO):
        assert client.get("/v1/whoami", headers=headers).status_code == 401
    (line,) = [r for r in caplog.records if r.name.endswith("requestlog")]
    assert line.auth_failure == reason


def test_a_guarded_blueprint_gets_the_scopes_it_declares(make_app, keys: KeySet) -> None:
    """What a team does to add a resource: one line, and every route of it needs the scope."""
    reports = guard(Blueprint("test-reports", __name__, url_prefix="/test-only/reports"), read="reports:read")
    reports.add_url_rule("", "list_reports", lambda: {"reports": []})
    app = make_app()
    app.register_blueprint(reports)
    client = app.test_client()
    assert_generic_401(client.get("/test-only/reports"))
    assert client.get("/test-only/reports", headers=bearer(keys.reader)).status_code == 403
    assert client.get("/test-only/reports", headers=bearer(keys.no_scopes)).get_json() == {"reports": []}


def test_a_write_needs_the_one_scope_declared_when_no_write_scope_is_given(make_app, keys: KeySet) -> None:
    """``requires("s")`` and ``guard(bp, read="s")`` ask for "s" of every method, writes included:
    a missing write scope never means that any key may write."""
    reports = guard(Blueprint("test-guarded", __name__, url_prefix="/test-only/guarded"), read="reports:read")
    reports.add_url_rule("", "add_report", lambda: ({"added": True}, 201), methods=["POST"])
    app = make_app()
    app.register_blueprint(reports)
    app.add_url_rule(
        "/test-only/required",
        "add_required",
        requires("reports:read")(lambda: ({"added": True}, 201)),
        methods=["POST"],
    )
    client = app.test_client()
    for path in ("/test-only/guarded", "/test-only/required"):
        assert client.post(path, headers=bearer(keys.writer)).status_code == 403
        assert client.post(path, headers=bearer(keys.no_scopes)).status_code == 201


def test_a_write_needs_the_write_scope_declared_beside_a_read_scope(make_app, keys: KeySet) -> None:
    app = make_app()
    view = requires(read="reports:read", write="items:write")(lambda: ({"added": True}, 201))
    app.add_url_rule("/test-only/split", "add_split", view, methods=["GET", "POST"])
    client = app.test_client()
    assert client.post("/test-only/split", headers=bearer(keys.no_scopes)).status_code == 403
    assert client.post("/test-only/split", headers=bearer(keys.writer)).status_code == 201
    assert client.get("/test-only/split", headers=bearer(keys.writer)).status_code == 403


def test_a_guarded_blueprint_is_declared_on_an_app_without_the_gate() -> None:
    """The OpenAPI document reads the declarations from an app that has only the routes."""
    reports = guard(Blueprint("test-bare", __name__), read="reports:read", write="reports:write")
    reports.add_url_rule("/test-only/bare", "list_reports", lambda: {})
    app = Flask(__name__)
    app.register_blueprint(reports)
    declared = Declarations(app).of("test-bare.list_reports")
    assert declared is not None
    assert (declared.read, declared.write) == ("reports:read", "reports:write")


def test_a_nested_blueprint_is_declared_by_its_own_guard_else_by_the_nearest_guarded_parent() -> None:
    parent = guard(Blueprint("test-parent", __name__), read="reports:read")
    guarded = guard(Blueprint("test-guarded", __name__), read="items:read")
    plain = Blueprint("test-plain", __name__)
    for child in (guarded, plain):
        child.add_url_rule(f"/test-only/{child.name}", "show", lambda: {})
        parent.register_blueprint(child)
    app = Flask(__name__)
    app.register_blueprint(parent)
    declarations = Declarations(app)
    found = [declarations.of(f"test-parent.{child}.show") for child in ("test-guarded", "test-plain")]
    assert [access.read if access else None for access in found] == ["items:read", "reports:read"]


def test_a_plain_blueprint_registered_after_the_start_is_closed(make_app, keys: KeySet) -> None:
    """A Blueprint as every Flask tutorial writes it, added after create_app(): no declaration,
    so no one gets in, with a key or without."""
    plain = Blueprint("test-tutorial", __name__, url_prefix="/test-only/tutorial")
    plain.add_url_rule("", "read_everything", lambda: {"tenants": "all of them"})
    app = make_app()
    app.register_blueprint(plain)
    client = app.test_client()
    assert_generic_401(client.get("/test-only/tutorial"))
    for key in (keys.reader, keys.writer, keys.no_scopes):
        response = client.get("/test-only/tutorial", headers=bearer(key))
        assert response.status_code == 403
        assert "tenants" not in response.get_data(as_text=True)


def test_a_plain_route_added_after_the_start_is_closed(make_app, keys: KeySet) -> None:
    app = make_app()
    app.add_url_rule("/test-only/late", "late", lambda: {"late": True}, methods=["GET", "POST"])
    client = app.test_client()
    assert_generic_401(client.get("/test-only/late"))
    assert client.post("/test-only/late", headers=bearer(keys.writer)).status_code == 403


def test_a_route_declares_its_own_access_whenever_it_is_registered(make_app, keys: KeySet) -> None:
    app = make_app()
    app.add_url_rule("/test-only/open", "open", public(lambda: {"open": True}))
    app.add_url_rule("/test-only/signed", "signed", requires()(lambda: {"signed": True}))
    app.add_url_rule("/test-only/audit", "audit", requires("audit:read")(lambda: {"audit": []}))
    client = app.test_client()
    assert client.get("/test-only/open").status_code == 200
    assert_generic_401(client.get("/test-only/signed"))
    assert client.get("/test-only/signed", headers=bearer(keys.no_scopes)).status_code == 200
    assert client.get("/test-only/audit", headers=bearer(keys.writer)).status_code == 403


def test_a_view_declaration_wins_over_its_blueprints(make_app, keys: KeySet) -> None:
    reports = guard(Blueprint("test-reports", __name__, url_prefix="/test-only/reports"), read="reports:read")
    reports.add_url_rule("/status", "status", public(lambda: {"status": "ok"}))
    reports.add_url_rule("/secret", "secret", requires("reports:admin")(lambda: {"secret": 1}))
    app = make_app()
    app.register_blueprint(reports)
    client = app.test_client()
    assert client.get("/test-only/reports/status").status_code == 200
    assert client.get("/test-only/reports/secret", headers=bearer(keys.no_scopes)).status_code == 403


def test_a_write_needs_the_write_scope_and_a_read_the_read_scope(make_app, keys: KeySet) -> None:
    orders = guard(
        Blueprint("test-orders", __name__, url_prefix="/test-only/orders"),
        read="items:read",
        write="items:write",
    )
    orders.add_url_rule("", "orders", lambda: {"orders": []}, methods=["GET", "POST", "DELETE"])
    app = make_app()
    app.register_blueprint(orders)
    client = app.test_client()
    assert client.get("/test-only/orders", headers=bearer(keys.reader)).status_code == 200
    assert client.post("/test-only/orders", headers=bearer(keys.reader)).status_code == 403
    assert client.delete("/test-only/orders", headers=bearer(keys.reader)).status_code == 403
    assert client.delete("/test-only/orders", headers=bearer(keys.writer)).status_code == 200


def test_an_undeclared_route_stops_the_start_naming_its_endpoint(
    make_app, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = Blueprint("test-reports", __name__, url_prefix="/test-only/reports")
    plain.add_url_rule("", "list_reports", lambda: {"reports": []})
    monkeypatch.setattr("{{ cookiecutter.package_name }}.api.BLUEPRINTS", (*BLUEPRINTS, plain))
    with pytest.raises(UndeclaredRoute) as refused:
        make_app()
    message = str(refused.value)
    assert "\n" not in message
    assert "test-reports.list_reports" in message
    assert "/test-only/reports" in message
    assert message.endswith("add @public, @requires(...) or guard(blueprint, ...)")


def test_every_route_of_the_service_declares_its_access(app: Flask) -> None:
    """The URL map, walked: a route a team adds without a declaration fails here, and the start."""
    declarations = Declarations(app)
    undeclared = [
        rule.endpoint for rule in app.url_map.iter_rules() if declarations.of(rule.endpoint) is None
    ]
    assert undeclared == []


def test_a_key_in_the_url_is_refused_and_logged_as_such(
    client: FlaskClient, keys: KeySet, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = client.get(f"/v1/items?api_key={keys.reader.secret}")
    assert response.status_code == 400
    assert (
        response.get_json()["detail"] == "API keys are not accepted in the URL; send an Authorization header."
    )
    (line,) = [r for r in caplog.records if r.name.endswith("requestlog")]
    assert line.auth_failure == "key_in_url"


def test_the_key_id_is_left_for_the_access_log_in_the_wsgi_environ(app: Flask, keys: KeySet) -> None:
    """gunicorn's access_log_format reads %({app.key_id}e)s from the environ the app was given."""
    seen: dict[str, object] = {}
    inner = app.wsgi_app

    def recording(environ, start_response):
        try:
            return inner(environ, start_response)
        finally:
            seen.update(environ)

    app.wsgi_app = recording
    assert app.test_client().get("/v1/whoami", headers=bearer(keys.reader)).status_code == 200
    assert seen["app.key_id"] == "reader"


def test_current_caller_in_a_view_that_declares_no_key_says_what_to_declare(make_app) -> None:
    """A programming error, met on the first request in development: its message names the fix."""
    app = make_app()
    with app.test_request_context("/"), pytest.raises(RuntimeError) as raised:
        current_caller()
    assert str(raised.value) == "current_caller() in a view that declares no key: declare @requires(...)"


def test_the_request_line_of_a_request_without_a_key_names_no_key_id(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        assert client.get("/v1/whoami").status_code == 401
    (line,) = [r for r in caplog.records if r.name.endswith("requestlog")]
    assert line.key_id is None
