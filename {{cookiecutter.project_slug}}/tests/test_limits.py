"""Rate limits per key id, per address without a valid key, and on failed authentications."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from {{ cookiecutter.package_name }}.limits import install_limits, limit
from {{ cookiecutter.package_name }}.settings import Settings

from .support import KeySet, bearer


def from_address(address: str) -> dict[str, dict[str, str]]:
    return {"environ_overrides": {"REMOTE_ADDR": address}}


def statuses(client: FlaskClient, count: int, path: str = "/v1/whoami", **kwargs: object) -> list[int]:
    return [client.get(path, **kwargs).status_code for _ in range(count)]  # type: ignore[arg-type]


def test_limit_is_counted_per_key(make_app, keys: KeySet) -> None:
    client = make_app(RATELIMIT_DEFAULT="3 per hour").test_client()
    assert statuses(client, 4, headers=bearer(keys.reader)) == [200, 200, 200, 429]
    assert statuses(client, 1, headers=bearer(keys.writer)) == [200]


def test_limit_follows_the_key_not_the_address(make_app, keys: KeySet) -> None:
    client = make_app(RATELIMIT_DEFAULT="2 per hour").test_client()
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        client.get("/v1/whoami", headers=bearer(keys.reader), **from_address(address))
    assert client.get("/v1/whoami", headers=bearer(keys.reader)).status_code == 429


def test_over_the_limit_is_429_problem_with_retry_after(make_app, keys: KeySet) -> None:
    client = make_app(RATELIMIT_DEFAULT="1 per minute").test_client()
    client.get("/v1/whoami", headers=bearer(keys.reader))
    response = client.get("/v1/whoami", headers=bearer(keys.reader))
    assert response.status_code == 429
    assert response.content_type == "application/problem+json"
    assert 0 < int(response.headers["Retry-After"]) <= 60
    assert response.headers["X-RateLimit-Limit"] == "1"
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert int(response.headers["X-RateLimit-Reset"]) > 0


def test_responses_carry_the_remaining_quota(make_app, keys: KeySet) -> None:
    client = make_app(RATELIMIT_DEFAULT="5 per minute").test_client()
    remaining = [
        client.get("/v1/whoami", headers=bearer(keys.reader)).headers["X-RateLimit-Remaining"]
        for _ in range(3)
    ]
    assert remaining == ["4", "3", "2"]


def test_requests_without_a_key_are_limited_per_address(make_app) -> None:
    client = make_app(RATELIMIT_DEFAULT="2 per hour", RATELIMIT_AUTH_FAILURES="100 per hour").test_client()
    assert statuses(client, 3, **from_address("192.0.2.1")) == [401, 401, 429]
    assert statuses(client, 1, **from_address("192.0.2.2")) == [401]


def test_failed_authentications_are_limited_but_valid_keys_are_not(make_app, keys: KeySet) -> None:
    client = make_app(RATELIMIT_AUTH_FAILURES="3 per hour").test_client()
    guesses = [{"headers": bearer(keys.unconfigured)}, {"headers": {"X-API-Key": "wrong"}}, {}]
    assert [client.get("/v1/items", **g).status_code for g in guesses] == [401, 401, 401]
    assert statuses(client, 2, headers=bearer(keys.unconfigured)) == [429, 429]
    assert statuses(client, 2, headers=bearer(keys.reader)) == [200, 200]


def test_successful_requests_do_not_count_as_failures(make_app, keys: KeySet) -> None:
    client = make_app(RATELIMIT_AUTH_FAILURES="2 per hour").test_client()
    statuses(client, 5, headers=bearer(keys.reader))
    assert statuses(client, 3) == [401, 401, 429]


def test_health_is_never_limited(make_app) -> None:
    client = make_app(RATELIMIT_DEFAULT="1 per hour").test_client()
    assert set(statuses(client, 10, "/healthz")) == {200}


def test_a_route_can_declare_its_own_limit(make_app, keys: KeySet) -> None:
    client = make_app(RATELIMIT_DEFAULT="2 per hour").test_client()
    created = [
        client.post("/v1/items", headers=bearer(keys.writer), json={"name": "x"}).status_code
        for _ in range(31)
    ]
    assert created == [201] * 30 + [429]


def test_storage_holds_key_ids_never_keys(app: Flask, keys: KeySet) -> None:
    client = app.test_client()
    client.get("/v1/whoami", headers=bearer(keys.reader))
    client.get("/v1/whoami", headers=bearer(keys.unconfigured))
    (limiter,) = app.extensions["limiter"]
    stored = " ".join(map(str, limiter.storage.storage))
    assert "key:reader" in stored
    assert "addr:127.0.0.1" in stored
    for secret in (keys.reader.secret, keys.unconfigured.secret):
        assert secret[-20:] not in stored


def test_invalid_route_limit_stops_the_start(settings: Settings) -> None:
    app = Flask(__name__)

    @app.get("/x")
    @limit("as many as you like")
    def x() -> str:
        return "x"

    with pytest.raises(ValueError, match="route x: invalid rate limit"):
        install_limits(app, settings)
