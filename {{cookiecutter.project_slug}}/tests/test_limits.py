"""Rate limits per key id, per address without a valid key, and on failed authentications;
the IETF quota fields, and Retry-After only with 429."""

from __future__ import annotations

import dataclasses
import re
import socket
import threading
import time

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.exceptions import HTTPException

from {{ cookiecutter.package_name }} import limits
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, MintedKey, mint
from {{ cookiecutter.package_name }}.limits import exempt, install_limits, limit
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


class Clock:
    """``time.time`` for the limiter and its in-memory storage, moved by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = int(time.time()) + 0.5  # mid-second, so that rounding shows
        monkeypatch.setattr(time, "time", lambda: self.now)


def test_a_new_window_announces_its_own_end_not_the_last_ones(
    make_app, keys: KeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(monkeypatch)
    client = make_app(RATELIMIT_DEFAULT="5 per 10 seconds").test_client()
    assert quota(client.get("/v1/whoami", headers=bearer(keys.reader)))[1:] == (4, 10)
    clock.now += 10.2  # the window ended; the next request opens another
    assert quota(client.get("/v1/whoami", headers=bearer(keys.reader)))[1:] == (4, 10)


@pytest.mark.parametrize("hits_before", [2, 3])
def test_a_counter_the_storage_lost_announces_its_new_end(
    make_app, keys: KeySet, monkeypatch: pytest.MonkeyPatch, hits_before: int
) -> None:
    """As when Redis restarts without its data: the window starts again from the next hit, whose
    count is lower than the last one seen."""
    clock = Clock(monkeypatch)
    app = make_app(RATELIMIT_DEFAULT="5 per 10 seconds")
    client = app.test_client()
    for _ in range(hits_before):
        client.get("/v1/whoami", headers=bearer(keys.reader))
    clock.now += 4
    (limiter,) = app.extensions["limiter"]
    limiter.reset()
    assert quota(client.get("/v1/whoami", headers=bearer(keys.reader)))[1:] == (4, 10)


def count_window_reads(app: Flask, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The storage keys whose window end the app reads, one entry per read."""
    (limiter,) = app.extensions["limiter"]
    storage = limiter.storage
    reads: list[str] = []
    read = storage.get_expiry

    def counted(key: str) -> float:
        reads.append(key)
        return read(key)

    monkeypatch.setattr(storage, "get_expiry", counted)
    return reads


def test_a_fixed_windows_end_is_read_once_per_window(
    make_app, keys: KeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One storage round trip per request for the fields, not two: the end is remembered, and
    each answer counts down to it."""
    clock = Clock(monkeypatch)
    app = make_app(RATELIMIT_DEFAULT="5 per 10 seconds")
    reads = count_window_reads(app, monkeypatch)
    client = app.test_client()
    resets = []
    for _ in range(3):
        resets.append(quota(client.get("/v1/whoami", headers=bearer(keys.reader)))[2])
        clock.now += 3
    assert resets == [10, 7, 4]
    assert len(reads) == 1


def test_requests_in_flight_that_read_the_same_count_read_the_end_once(
    make_app, keys: KeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests in flight both hit, then both read the count: the second sees the count the
    first saw. That is the same window, not a replaced counter; re-reading its end would cost a
    Redis round trip on about every other request under load."""
    app = make_app(RATELIMIT_DEFAULT="5 per 10 seconds")
    reads = count_window_reads(app, monkeypatch)
    (limiter,) = app.extensions["limiter"]
    storage = limiter.storage
    count = storage.get
    monkeypatch.setattr(storage, "get", lambda key: min(count(key), 2))  # both read 2
    client = app.test_client()
    for _ in range(3):
        client.get("/v1/whoami", headers=bearer(keys.reader))
    assert len(reads) == 1  # the first answer's: the third read the same count as the second


def test_a_windows_end_is_read_again_in_its_last_second(
    make_app, keys: KeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis gives a time to live in whole seconds: from one second before the end remembered,
    the window may already be another one, so its end is read again."""
    clock = Clock(monkeypatch)
    app = make_app(RATELIMIT_DEFAULT="5 per 10 seconds")
    reads = count_window_reads(app, monkeypatch)
    client = app.test_client()
    for step in (0, 8.5, 0.5):  # 10 s left, then 1.5 s, then exactly 1 s
        clock.now += step
        client.get("/v1/whoami", headers=bearer(keys.reader))
    assert len(reads) == 2


def test_remembered_window_ends_are_forgotten_all_at_once_when_full(
    make_app, keys: KeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of new clients cannot grow the memory of window ends beyond its bound: when full,
    it is emptied, and a client seen before has its window end read again."""
    monkeypatch.setattr(limits, "WINDOWS_REMEMBERED", 2)
    app = make_app(RATELIMIT_DEFAULT="5 per 10 seconds")
    reads = count_window_reads(app, monkeypatch)
    client = app.test_client()
    for key in (keys.reader, keys.writer, keys.other_tenant, keys.reader):
        client.get("/v1/whoami", headers=bearer(key))
    assert len(reads) == 4


def test_the_moving_window_strategy_counts_each_request_for_its_own_window(
    make_app, keys: KeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RATELIMIT_STRATEGY=moving-window: no burst of twice the limit across a window's edge, as
    a fixed window allows."""
    clock = Clock(monkeypatch)
    client = make_app(RATELIMIT_DEFAULT="2 per 10 seconds", RATELIMIT_STRATEGY="moving-window").test_client()
    answers = []
    for step in (0, 6, 4.5, 0.1):  # the first request leaves the window after 10 s, the second after 16
        clock.now += step
        answers.append(client.get("/v1/whoami", headers=bearer(keys.reader)))
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [quota(a)[1] for a in answers] == [1, 0, 0, 0]


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
    client = make_app(RATELIMIT_DEFAULT="2 per hour", RATELIMIT_AUTH_FAILURES="100 per hour").test_client()
    assert statuses(client, 3, **from_address("192.0.2.1")) == [401, 401, 429]
    assert statuses(client, 1, **from_address("192.0.2.2")) == [401]


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

    with pytest.raises(ValueError, match="route x: is not a rate limit"):
        install_limits(app, settings)


def test_a_route_limit_with_a_zero_window_stops_the_start(settings: Settings) -> None:
    app = Flask(__name__)

    @app.get("/x")
    @limit("1 per 0 second")
    def x() -> str:
        return "x"

    with pytest.raises(ValueError, match="route x: needs at least one request"):
        install_limits(app, settings)


# --- a key's own limit (its entry's limit=) ----------------------------------------------------


def own_limit(limit: str, key_id: str = "metered") -> MintedKey:
    return mint(KEY_PREFIX, key_id=key_id, scopes=["items:read", "items:write"], tenant="acme", limit=limit)


def test_a_key_with_its_own_limit_gets_it_instead_of_the_default(make_app, keys: KeySet) -> None:
    metered = own_limit("2 per hour")
    client = make_app(
        API_KEYS=f"{keys.entries},{metered.entry}", RATELIMIT_DEFAULT="5 per hour"
    ).test_client()
    assert statuses(client, 3, headers=bearer(metered)) == [200, 200, 429]
    assert statuses(client, 5, headers=bearer(keys.reader)) == [200] * 5


def test_a_generous_own_limit_lifts_the_default_for_that_key_only(make_app, keys: KeySet) -> None:
    metered = own_limit("10 per hour")
    client = make_app(
        API_KEYS=f"{keys.entries},{metered.entry}", RATELIMIT_DEFAULT="1 per hour"
    ).test_client()
    assert statuses(client, 10, headers=bearer(metered)) == [200] * 10
    assert statuses(client, 2, headers=bearer(keys.reader)) == [200, 429]


def test_a_key_sees_its_own_quota_as_the_key_policy(make_app, keys: KeySet) -> None:
    metered = own_limit("7 per minute")
    client = make_app(API_KEYS=f"{keys.entries},{metered.entry}").test_client()
    response = client.get("/v1/whoami", headers=bearer(metered))
    assert response.headers["RateLimit-Policy"] == '"key";q=7;w=60'
    assert quota(response)[:2] == ("key", 6)
    default = client.get("/v1/whoami", headers=bearer(keys.reader))
    assert default.headers["RateLimit-Policy"] == '"default";q=100;w=60'


def test_a_key_with_several_windows_sees_each_as_a_policy(make_app, keys: KeySet) -> None:
    metered = own_limit("5/second;50/hour")
    client = make_app(API_KEYS=metered.entry).test_client()
    response = client.get("/v1/whoami", headers=bearer(metered))
    assert response.headers["RateLimit-Policy"] == '"key-1s";q=5;w=1, "key-3600s";q=50;w=3600'


def test_a_route_limit_still_applies_per_key_to_a_key_with_its_own_limit(make_app, keys: KeySet) -> None:
    metered = own_limit("1000 per hour")
    client = make_app(API_KEYS=f"{keys.entries},{metered.entry}").test_client()
    response = client.post("/v1/items", headers=bearer(metered), json={"name": "x"})
    assert response.headers["RateLimit-Policy"] == '"items.create_item";q=30;w=60'
    assert client.post("/v1/items", headers=bearer(keys.writer), json={"name": "x"}).status_code == 201
    assert quota(response)[:2] == ("items.create_item", 29)


def test_an_own_limit_is_counted_under_the_key_id(make_app) -> None:
    metered = own_limit("3 per hour")
    app = make_app(API_KEYS=metered.entry)
    app.test_client().get("/v1/whoami", headers=bearer(metered))
    (limiter,) = app.extensions["limiter"]
    stored = " ".join(map(str, limiter.storage.storage))
    assert "key:metered" in stored
    assert metered.secret[-20:] not in stored


def test_an_address_that_spent_its_failures_gets_429_on_every_route_but_exempt_ones(make_app) -> None:
    client = make_app(RATELIMIT_AUTH_FAILURES="2 per hour").test_client()
    assert statuses(client, 2) == [401, 401]
    assert client.get("/nowhere").status_code == 429
    assert client.get("/healthz").status_code == 200


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


def test_a_route_marked_exempt_is_never_limited(settings: Settings) -> None:
    app = Flask(__name__)

    @app.get("/limited")
    def limited() -> str:
        return "limited"

    @app.get("/free")
    @exempt
    def free() -> str:
        return "free"

    install_limits(app, dataclasses.replace(settings, ratelimit_default="1 per hour"))
    client = app.test_client()
    assert statuses(client, 2, "/limited") == [200, 429]
    assert statuses(client, 3, "/free") == [200, 200, 200]


def test_a_failure_that_overdraws_the_budget_at_once_is_429_not_401(make_app) -> None:
    """Two failures at once from one address, with one allowed: both pass the check before the
    request, and the one counted second is answered 429, so the budget is never exceeded."""
    app = make_app(RATELIMIT_AUTH_FAILURES="1 per hour")
    with app.test_request_context("/v1/whoami", environ_base={"REMOTE_ADDR": "127.0.0.1"}):
        # The budget check passes, then authentication fails: the 401 is not counted yet.
        with pytest.raises(HTTPException) as refused:
            app.preprocess_request()
        assert app.test_client().get("/v1/whoami").status_code == 401  # meanwhile, another failure
        response = app.finalize_request(refused.value.get_response())
    assert response.status_code == 429
    assert quota(response)[:2] == ("auth-failures", 0)
