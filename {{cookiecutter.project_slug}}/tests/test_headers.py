"""Security headers on every response, errors included; HSTS only over HTTPS; never a redirect."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from .support import KeySet, bearer

HTTPS = {"base_url": "https://localhost"}
EXPECTED = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
NOT_SENT = {"Permissions-Policy", "Document-Policy", "Feature-Policy", "Location", "Set-Cookie"}


@pytest.fixture
def limited(make_app) -> FlaskClient:
    return make_app(RATELIMIT_DEFAULT="1 per hour", MAX_CONTENT_LENGTH="16").test_client()


@pytest.mark.parametrize("case", ["200", "401", "403", "404", "405", "413", "429"])
def test_security_headers_are_on_every_response(limited: FlaskClient, keys: KeySet, case: str) -> None:
    request = {
        "200": ("GET", "/v1/whoami", bearer(keys.reader)),
        "401": ("GET", "/v1/whoami", {}),
        "403": ("GET", "/v1/items", bearer(keys.no_scopes)),
        "404": ("GET", "/nowhere", {}),
        "405": ("PUT", "/healthz", bearer(keys.reader)),
        "413": ("POST", "/v1/items", {**bearer(keys.writer), "Content-Type": "application/json"}),
        "429": ("GET", "/v1/whoami", bearer(keys.reader)),
    }
    method, path, headers = request[case]
    if case == "429":
        limited.get(path, headers=headers, **HTTPS)
    response = limited.open(
        path, method=method, headers=headers, data=b"{}" * 20 if case == "413" else None, **HTTPS
    )
    assert str(response.status_code) == case
    for name, value in EXPECTED.items():
        assert response.headers[name] == value, name
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    # A JSON API uses no browser feature: no policy is built and sent with every response.
    for name in NOT_SENT:
        assert name not in response.headers, name


def test_hsts_preload_is_an_option(make_app, keys: KeySet) -> None:
    client = make_app(HSTS_PRELOAD="true").test_client()
    hsts = client.get("/healthz", **HTTPS).headers["Strict-Transport-Security"]
    assert hsts == "max-age=31536000; includeSubDomains; preload"


def test_plain_http_is_answered_without_hsts_and_without_redirect(client: FlaskClient, keys: KeySet) -> None:
    response = client.post("/v1/items", headers=bearer(keys.writer), json={"name": "x"})
    assert response.status_code == 201
    assert "Strict-Transport-Security" not in response.headers
    assert "Location" not in response.headers


def test_spoofed_forwarded_proto_does_not_earn_hsts(client: FlaskClient) -> None:
    response = client.get("/healthz", headers={"X-Forwarded-Proto": "https"})
    assert "Strict-Transport-Security" not in response.headers


def test_no_session_cookie_is_ever_set(client: FlaskClient, keys: KeySet) -> None:
    assert "Set-Cookie" not in client.get("/v1/whoami", headers=bearer(keys.reader)).headers


def test_no_cross_origin_read_is_ever_allowed(client: FlaskClient, keys: KeySet) -> None:
    origin = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    for response in (
        client.get("/v1/whoami", headers={**bearer(keys.reader), **origin}),
        client.options("/v1/whoami", headers=origin),
    ):
        assert not [name for name, _ in response.headers if name.lower().startswith("access-control-")]
