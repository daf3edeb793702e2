"""Rate limits per key id, per address without a valid key, and on failed authentications;
the IETF quota fields, and Retry-After only with 429."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest
from flask import Flask
from flask.testing import FlaskClient
from limits import parse_many
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from {{ cookiecutter.package_name }} import limits as limits_module
from {{ cookiecutter.package_name }}.access import public, requires
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, MintedKey, mint
from {{ cookiecutter.package_name }}.limits import exempt, limit
from {{ cookiecutter.package_name }}.settings import Invalid

from .support import KeySet, bearer, free_port


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


QUOTA = re.compile(r'"(?P<name>[^"]+)";r=(?P<r>\d+);t=(?P<t>\d+)')


def quota(response) -> tuple[str, int, int]:
    match = QUOTA.fullmatch(response.headers["RateLimit"])
    assert match, response.headers["RateLimit"]
    return match["name"], int(match["r"]), int(match["t"])


def test_over_the_limit_is_429_problem_with_retry_after(make_app, keys: KeySet) -> None:
    client = make_app(RATELIMIT_DEFAULT="1 per minute").test_client()
    client.get("/v1/whoami", headers=bearer(keys.reader))
    response = client.get("/v1/whoami", headers=bearer(keys.reader))
    assert response.status_code == 429
    assert response.content_type == "application/problem+json"
    assert 0 < int(response.headers["Retry-After"]) <= 60
    assert response.headers["RateLimit-Policy"] == '"default";q=1;w=60'
    name, remaining, reset = quota(response)
    assert (name, remaining) == ("default", 0)
    assert reset == int(response.headers["Retry-After"])


def test_responses_carry_the_ietf_quota_fields(make_app, keys: KeySet) -> None:
    client = make_app(RATELIMIT_DEFAULT="5 per minute").test_client()
    answers = [client.get("/v1/whoami", headers=bearer(keys.reader)) for _ in range(3)]
    assert {a.headers["RateLimit-Policy"] for a in answers} == {'"default";q=5;w=60'}
    assert [quota(a)[1] for a in answers] == [4, 3, 2]
    assert all(0 < quota(a)[2] <= 60 for a in answers)


def test_the_configured_strategy_counts(make_app) -> None:
    """RATELIMIT_STRATEGY reaches Flask-Limiter: its strategy in use is the one named."""
    for name, strategy in (
        ("fixed-window", FixedWindowRateLimiter),
        ("moving-window", MovingWindowRateLimiter),
    ):
        limits = make_app(RATELIMIT_STRATEGY=name).extensions["limits"]
        assert isinstance(limits.limiter.limiter, strategy)


def test_a_redis_that_stops_answering_costs_seconds_never_a_hang_or_a_500(make_app, keys: KeySet) -> None:
    """A Redis host that takes connections and never answers (paused, or cut off): a request
    gives up on it after the 1 s timeouts and is counted in memory, and a request already
    waiting on it when the first gave up passes uncounted, rather than answering 500."""
    # Listening but never accepting: the kernel completes each connection, and nothing answers.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        client = make_app(RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{port}/0").test_client()
        statuses: list[int] = []

        def send() -> None:
            statuses.append(client.get("/v1/whoami", headers=bearer(keys.reader)).status_code)

        senders = [threading.Thread(target=send, daemon=True) for _ in range(2)]
        deadline = time.monotonic() + 5
        for sender in senders:
            sender.start()
            time.sleep(0.3)  # the second waits on Redis too, and gives up after the first
        for sender in senders:
            sender.join(max(0, deadline - time.monotonic()))
        # Closing the listener resets any connection still waiting: no thread outlives the test.
    assert statuses == [200, 200]


def test_while_the_storage_is_down_each_route_limit_is_counted_in_memory_with_its_fields(
    make_app, keys: KeySet
) -> None:
    """Nothing listens at the storage's address: Flask-Limiter counts in this process's memory
    instead, and the answers name the same policies, and what is left of them, as ever."""
    app = make_app(
        RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{free_port()}/0",
        RATELIMIT_DEFAULT="2 per minute;50 per hour",
    )
    client = app.test_client()
    answers = [client.get("/v1/whoami", headers=bearer(keys.reader)) for _ in range(3)]
    assert app.extensions["limits"].on_fallback()
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert {a.headers["RateLimit-Policy"] for a in answers} == {
        '"default-60s";q=2;w=60, "default-3600s";q=50;w=3600'
    }
    assert [quota(a)[:2] for a in answers] == [("default-60s", 1), ("default-60s", 0), ("default-60s", 0)]
    assert "Retry-After" in answers[2].headers
    created = client.post("/v1/items", headers=bearer(keys.writer), json={"name": "x"})
    assert created.status_code == 201
    assert created.headers["RateLimit-Policy"] == '"items.create_item";q=30;w=60'
    assert quota(created)[:2] == ("items.create_item", 29)


def test_a_routes_limit_is_worked_out_once_not_on_every_request(
    make_app, keys: KeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate parses a route's limit on its first request only: the cost of each request after
    it stays that of a lookup, however long the limit's text."""
    client = make_app(RATELIMIT_DEFAULT="10 per second;100 per hour").test_client()
    first = client.get("/v1/whoami", headers=bearer(keys.reader))

    def parsed_again(text: str) -> None:
        raise AssertionError(f"the limit {text!r} was parsed again")

    monkeypatch.setattr(limits_module, "rate_limits", parsed_again)
    again = client.get("/v1/whoami", headers=bearer(keys.reader))
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.headers["RateLimit-Policy"] == first.headers["RateLimit-Policy"]


def test_retry_after_goes_only_with_429(make_app, keys: KeySet) -> None:
    client = make_app(RATELIMIT_DEFAULT="1 per minute", RATELIMIT_AUTH_FAILURES="1 per hour").test_client()
    for response in (client.get("/v1/whoami", headers=bearer(keys.reader)), client.get("/v1/items")):
        assert response.status_code in (200, 401)
        assert "Retry-After" not in response.headers
        assert "RateLimit" in response.headers


def test_the_nonstandard_x_ratelimit_fields_are_gone(client: FlaskClient, keys: KeySet) -> None:
    response = client.get("/v1/whoami", headers=bearer(keys.reader))
    assert not [name for name, _ in response.headers if name.lower().startswith("x-ratelimit")]


def test_a_route_limit_is_its_own_policy(make_app, keys: KeySet) -> None:
    client = make_app(RATELIMIT_DEFAULT="2 per hour").test_client()
    response = client.post("/v1/items", headers=bearer(keys.writer), json={"name": "x"})
    assert response.headers["RateLimit-Policy"] == '"items.create_item";q=30;w=60'
    assert quota(response)[:2] == ("items.create_item", 29)


def test_several_windows_in_one_limit_are_each_a_policy(make_app, keys: KeySet) -> None:
    client = make_app(RATELIMIT_DEFAULT="10 per second;100 per hour").test_client()
    response = client.get("/v1/whoami", headers=bearer(keys.reader))
    assert response.headers["RateLimit-Policy"] == '"default-1s";q=10;w=1, "default-3600s";q=100;w=3600'


def test_requests_without_a_key_are_limited_per_address(make_app) -> None:
    client = make_app(RATELIMIT_AUTH_FAILURES="2 per hour").test_client()
    assert statuses(client, 3, **from_address("192.0.2.1")) == [401, 401, 429]
    assert statuses(client, 1, **from_address("192.0.2.2")) == [401]


def test_a_public_route_is_limited_per_address_without_a_key(make_app, keys: KeySet) -> None:
    app = make_app()
    app.add_url_rule("/test-only/open", "open", limit("2 per hour")(public(lambda: {"open": True})))
    client = app.test_client()
    assert statuses(client, 3, "/test-only/open", **from_address("192.0.2.1")) == [200, 200, 429]
    assert statuses(client, 1, "/test-only/open", **from_address("192.0.2.2")) == [200]


def test_failed_authentications_are_limited_but_valid_keys_are_not(make_app, keys: KeySet) -> None:
    client = make_app(RATELIMIT_AUTH_FAILURES="3 per hour").test_client()
    guesses = [{"headers": bearer(keys.unconfigured)}, {"headers": {"X-API-Key": "wrong"}}, {}]
    assert [client.get("/v1/items", **g).status_code for g in guesses] == [401, 401, 401]
    assert statuses(client, 2, headers=bearer(keys.unconfigured)) == [429, 429]
    assert statuses(client, 2, headers=bearer(keys.reader)) == [200, 200]


def test_a_spent_failure_budget_is_429_with_its_own_policy(make_app, keys: KeySet) -> None:
    client = make_app(RATELIMIT_AUTH_FAILURES="2 per hour").test_client()
    answers = [client.get("/v1/items", headers=bearer(keys.unconfigured)) for _ in range(4)]
    assert [a.status_code for a in answers] == [401, 401, 429, 429]
    for answer in answers[2:]:
        assert answer.content_type == "application/problem+json"
        assert answer.headers["RateLimit-Policy"] == '"auth-failures";q=2;w=3600'
        assert quota(answer)[:2] == ("auth-failures", 0)
        assert 0 < int(answer.headers["Retry-After"]) <= 3600


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("2001:db8::1", "2001:DB8:0:0::1"),
        ("2001:db8::1", "2001:db8::ffff:1"),
        ("2001:db8::1", "2001:db8::8000:0:0:1"),
        ("192.0.2.7", "::ffff:192.0.2.7"),
    ],
    ids=["two-spellings", "same-64", "same-64-other-half", "ipv4-mapped"],
)
def test_addresses_are_normalised_and_ipv6_counts_by_64(make_app, first: str, second: str) -> None:
    client = make_app(RATELIMIT_AUTH_FAILURES="2 per hour").test_client()
    assert statuses(client, 2, **from_address(first)) == [401, 401]
    assert statuses(client, 1, **from_address(second)) == [429]


def test_another_ipv6_64_has_its_own_budget(make_app) -> None:
    client = make_app(RATELIMIT_AUTH_FAILURES="1 per hour").test_client()
    assert statuses(client, 2, **from_address("2001:db8:0:1::1")) == [401, 429]
    assert statuses(client, 1, **from_address("2001:db8:0:2::1")) == [401]


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


def remaining(app: Flask, text: str, *identity: str) -> int:
    """What is left of a limit for an identity, read through the strategy's documented API."""
    (item,) = parse_many(text)
    return app.extensions["limits"].limiter.limiter.get_window_stats(item, *identity).remaining


def test_limits_are_counted_under_key_ids_and_addresses(app: Flask, keys: KeySet) -> None:
    client = app.test_client()
    client.get("/v1/whoami", headers=bearer(keys.reader))
    client.get("/v1/whoami", headers=bearer(keys.unconfigured))
    assert remaining(app, "100 per minute", "key:reader", "whoami.whoami") == 99
    assert remaining(app, "20 per minute", "addr:127.0.0.1", "auth-failures") == 19


@pytest.mark.parametrize("value", ["as many as you like", "1 per 0 second", "0 per minute"])
def test_an_invalid_route_limit_stops_the_start(value: str) -> None:
    """Flask-Limiter would log it and quietly apply the default: refused when the route is
    declared, so the module that declares it cannot be imported."""
    with pytest.raises(Invalid):
        limit(value)


# --- a key's own limit (its entry's limit=) ----------------------------------------------------


def own_limit(limit: str, key_id: str = "metered") -> MintedKey:
    return mint(KEY_PREFIX, key_id=key_id, scopes=["items:read", "items:write"], tenant="acme", limit=limit)


def test_a_keys_own_limit_is_one_budget_across_every_route(make_app, keys: KeySet) -> None:
    """limit=2 per hour: two answers in all, whichever routes they are on, then 429 everywhere."""
    metered = own_limit("2 per hour")
    client = make_app(API_KEYS=f"{keys.entries},{metered.entry}").test_client()
    assert client.get("/v1/whoami", headers=bearer(metered)).status_code == 200
    assert client.post("/v1/items", headers=bearer(metered), json={"name": "x"}).status_code == 201
    refused = [
        client.get("/v1/items", headers=bearer(metered)),
        client.post("/v1/items", headers=bearer(metered), json={"name": "y"}),
        client.get("/v1/whoami", headers=bearer(metered)),
    ]
    assert [r.status_code for r in refused] == [429, 429, 429]
    assert quota(refused[0])[:2] == ("key", 0)
    assert statuses(client, 3, headers=bearer(keys.reader)) == [200] * 3


def test_an_own_limit_comes_on_top_of_the_route_limits(make_app, keys: KeySet) -> None:
    metered = own_limit("10 per hour")
    client = make_app(
        API_KEYS=f"{keys.entries},{metered.entry}", RATELIMIT_DEFAULT="1 per hour"
    ).test_client()
    assert statuses(client, 2, headers=bearer(metered)) == [200, 429]


def test_a_key_sees_its_own_budget_beside_the_route_policy(make_app, keys: KeySet) -> None:
    metered = own_limit("7 per minute")
    client = make_app(API_KEYS=f"{keys.entries},{metered.entry}").test_client()
    response = client.get("/v1/whoami", headers=bearer(metered))
    assert response.headers["RateLimit-Policy"] == '"default";q=100;w=60, "key";q=7;w=60'
    assert quota(response)[:2] == ("key", 6)
    default = client.get("/v1/whoami", headers=bearer(keys.reader))
    assert default.headers["RateLimit-Policy"] == '"default";q=100;w=60'


def test_a_key_with_several_windows_sees_each_as_a_policy(make_app, keys: KeySet) -> None:
    metered = own_limit("5/second;50/hour")
    client = make_app(API_KEYS=metered.entry).test_client()
    response = client.get("/v1/whoami", headers=bearer(metered))
    assert response.headers["RateLimit-Policy"] == (
        '"default";q=100;w=60, "key-1s";q=5;w=1, "key-3600s";q=50;w=3600'
    )


def test_a_route_limit_still_applies_per_key_to_a_key_with_its_own_limit(make_app, keys: KeySet) -> None:
    metered = own_limit("1000 per hour")
    client = make_app(API_KEYS=f"{keys.entries},{metered.entry}").test_client()
    response = client.post("/v1/items", headers=bearer(metered), json={"name": "x"})
    assert response.headers["RateLimit-Policy"] == '"items.create_item";q=30;w=60, "key";q=1000;w=3600'
    assert client.post("/v1/items", headers=bearer(keys.writer), json={"name": "x"}).status_code == 201
    assert quota(response)[:2] == ("items.create_item", 29)


def test_an_own_limit_is_counted_under_the_key_id(make_app) -> None:
    metered = own_limit("3 per hour")
    app = make_app(API_KEYS=metered.entry)
    app.test_client().get("/v1/whoami", headers=bearer(metered))
    assert remaining(app, "3 per hour", "key:metered", "key") == 2


# --- one budget per tenant (RATELIMIT_TENANT) --------------------------------------------------


def test_the_keys_of_one_tenant_share_one_budget(make_app, keys: KeySet) -> None:
    """Minting more keys buys no more quota: reader and writer are both tenant acme."""
    client = make_app(RATELIMIT_TENANT="4 per minute").test_client()
    answers = [client.get("/v1/whoami", headers=bearer(key)) for key in (keys.reader, keys.writer) * 3]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 429, 429]
    assert quota(answers[4])[:2] == ("tenant", 0)
    assert '"tenant";q=4;w=60' in answers[0].headers["RateLimit-Policy"]
    assert client.get("/v1/whoami", headers=bearer(keys.other_tenant)).status_code == 200


def test_without_a_tenant_budget_tenants_are_not_counted(make_app, keys: KeySet) -> None:
    client = make_app().test_client()
    response = client.get("/v1/whoami", headers=bearer(keys.reader))
    assert "tenant" not in response.headers["RateLimit-Policy"]


# --- paths that match no route (404, 405), per address (RATELIMIT_UNMATCHED) -------------------


def test_unmatched_paths_are_limited_per_address(make_app, keys: KeySet) -> None:
    client = make_app(RATELIMIT_UNMATCHED="3 per hour").test_client()
    answers = [
        client.get("/nowhere", **from_address("192.0.2.1")),
        client.put("/v1/items", headers=bearer(keys.reader), **from_address("192.0.2.1")),
        client.get("/v1//items", **from_address("192.0.2.1")),
        client.get("/elsewhere", headers=bearer(keys.reader), **from_address("192.0.2.1")),
    ]
    assert [a.status_code for a in answers] == [404, 405, 404, 429]
    assert quota(answers[3])[:2] == ("unmatched", 0)
    assert 0 < int(answers[3].headers["Retry-After"]) <= 3600
    assert client.get("/nowhere", **from_address("192.0.2.2")).status_code == 404
    assert (
        client.get("/v1/whoami", headers=bearer(keys.reader), **from_address("192.0.2.1")).status_code == 200
    )


def test_an_address_that_spent_its_failures_gets_429_on_every_route_but_exempt_ones(make_app) -> None:
    client = make_app(RATELIMIT_AUTH_FAILURES="2 per hour").test_client()
    assert statuses(client, 2) == [401, 401]
    assert client.get("/nowhere").status_code == 429
    assert client.get("/healthz").status_code == 200


def test_a_caller_without_a_key_where_none_is_needed_spends_no_failure(make_app) -> None:
    """Only a failed authentication spends the failure budget: a public route or an unmatched
    path, asked without a key, is checked against it and never charged."""
    client = make_app(RATELIMIT_AUTH_FAILURES="2 per hour").test_client()
    assert statuses(client, 3, "/nowhere") == [404, 404, 404]
    reports = [client.post("/v1/keys/revoke", json={"key": "nothing"}).status_code for _ in range(3)]
    assert reports == [202, 202, 202]
    assert statuses(client, 3) == [401, 401, 429]


def test_retry_after_is_never_less_than_a_second(make_app, keys: KeySet) -> None:
    # A one-second window always has less than a whole second left: rounded down, that is 0.
    client = make_app(RATELIMIT_DEFAULT="1 per second").test_client()
    answers = [client.get("/v1/whoami", headers=bearer(keys.reader)) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 429]
    assert answers[1].headers["Retry-After"] == "1"
    assert quota(answers[1])[2] == 1


def test_the_quota_field_names_the_current_limit_by_its_window(make_app, keys: KeySet) -> None:
    client = make_app(RATELIMIT_DEFAULT="3 per hour;100 per day").test_client()
    response = client.get("/v1/whoami", headers=bearer(keys.reader))
    assert quota(response)[:2] == ("default-3600s", 2)


def test_a_429_names_the_limit_that_was_spent(make_app, keys: KeySet) -> None:
    client = make_app(RATELIMIT_DEFAULT="10 per second;2 per hour").test_client()
    answers = [client.get("/v1/whoami", headers=bearer(keys.reader)) for _ in range(3)]
    assert answers[2].status_code == 429
    assert quota(answers[2])[:2] == ("default-3600s", 0)


def test_a_route_marked_exempt_is_never_limited(make_app, keys: KeySet) -> None:
    app = make_app(RATELIMIT_DEFAULT="1 per hour")
    app.add_url_rule("/limited", "limited", requires()(lambda: "limited"))
    app.add_url_rule("/free", "free", exempt(requires()(lambda: "free")))
    client = app.test_client()
    assert statuses(client, 2, "/limited", headers=bearer(keys.reader)) == [200, 429]
    assert statuses(client, 3, "/free", headers=bearer(keys.reader)) == [200, 200, 200]


def test_a_failure_is_counted_when_it_happens_not_after_the_answer(make_app) -> None:
    """Counted in one atomic step of the storage as the 401 is decided, so that failures that
    arrive together can never overdraw the budget (the Redis tests send them in parallel)."""
    app = make_app(RATELIMIT_AUTH_FAILURES="2 per hour")
    with app.test_request_context("/v1/whoami", environ_base={"REMOTE_ADDR": "127.0.0.1"}):
        answer = app.preprocess_request()
        assert answer is not None
        assert answer.status_code == 401
        assert remaining(app, "2 per hour", "addr:127.0.0.1", "auth-failures") == 1
    assert app.test_client().get("/v1/whoami").status_code == 401
    assert app.test_client().get("/v1/whoami").status_code == 429
