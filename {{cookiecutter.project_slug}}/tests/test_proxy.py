"""Forwarded headers count only from the proxies named in FORWARDED_ALLOW_IPS."""

from __future__ import annotations

import logging

import pytest
from flask.testing import FlaskClient

from {{ cookiecutter.package_name }}.proxy import client_address

from .support import KeySet, bearer

PROXY = "10.0.0.5"


def via(address: str, **headers: str) -> dict[str, object]:
    return {"environ_overrides": {"REMOTE_ADDR": address}, "headers": headers}


def test_trusted_proxy_supplies_the_client_address(make_app) -> None:
    client = make_app(FORWARDED_ALLOW_IPS=PROXY, RATELIMIT_AUTH_FAILURES="1 per hour").test_client()
    first = client.get("/v1/whoami", **via(PROXY, **{"X-Forwarded-For": "198.51.100.1"}))
    second = client.get("/v1/whoami", **via(PROXY, **{"X-Forwarded-For": "198.51.100.2"}))
    assert (first.status_code, second.status_code) == (401, 401)


def test_spoofed_forwarded_for_from_a_client_changes_nothing(make_app) -> None:
    client = make_app(FORWARDED_ALLOW_IPS=PROXY, RATELIMIT_AUTH_FAILURES="1 per hour").test_client()
    first = client.get("/v1/whoami", **via("203.0.113.9", **{"X-Forwarded-For": "198.51.100.1"}))
    second = client.get("/v1/whoami", **via("203.0.113.9", **{"X-Forwarded-For": "198.51.100.2"}))
    assert (first.status_code, second.status_code) == (401, 429)


@pytest.mark.parametrize("prepended", [["1.1.1.1"], ["1.1.1.1", "3.3.3.3"]], ids=["one", "two"])
def test_last_hop_is_used_so_a_client_cannot_prepend_addresses(make_app, prepended: list[str]) -> None:
    client = make_app(FORWARDED_ALLOW_IPS=PROXY, RATELIMIT_AUTH_FAILURES="1 per hour").test_client()
    client.get("/v1/whoami", **via(PROXY, **{"X-Forwarded-For": ", ".join([*prepended, "198.51.100.7"])}))
    again = client.get("/v1/whoami", **via(PROXY, **{"X-Forwarded-For": "2.2.2.2, 198.51.100.7"}))
    assert again.status_code == 429


@pytest.mark.parametrize("peer", ["", "proxy.internal", "unix:/run/gunicorn.sock"])
def test_a_peer_that_is_not_an_address_is_never_trusted(make_app, peer: str) -> None:
    client = make_app(FORWARDED_ALLOW_IPS=PROXY).test_client()
    response = client.get("/healthz", **via(peer, **{"X-Forwarded-Proto": "https"}))
    assert "Strict-Transport-Security" not in response.headers


def test_trusted_proxy_scheme_earns_hsts(make_app) -> None:
    client = make_app(FORWARDED_ALLOW_IPS="10.0.0.0/8").test_client()
    response = client.get("/healthz", **via(PROXY, **{"X-Forwarded-Proto": "https"}))
    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")


def test_spoofed_scheme_from_a_client_does_not_earn_hsts(make_app) -> None:
    client = make_app(FORWARDED_ALLOW_IPS=PROXY).test_client()
    response = client.get("/healthz", **via("203.0.113.9", **{"X-Forwarded-Proto": "https"}))
    assert "Strict-Transport-Security" not in response.headers


def test_without_named_proxies_no_one_is_trusted(client: FlaskClient, keys: KeySet) -> None:
    response = client.get(
        "/v1/whoami", **via("127.0.0.1", **{"X-Forwarded-Proto": "https", **bearer(keys.reader)})
    )
    assert response.status_code == 200
    assert "Strict-Transport-Security" not in response.headers


def test_a_trusted_proxy_that_names_no_client_leaves_its_own_address(
    make_app, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_app(FORWARDED_ALLOW_IPS=PROXY).test_client()
    with caplog.at_level(logging.INFO):
        client.get("/healthz", **via(PROXY))
    (line,) = [record for record in caplog.records if record.name.endswith("requestlog")]
    assert line.remote_addr == PROXY


@pytest.mark.parametrize(
    ("proto", "hsts"), [("http, http, https", True), ("https, https, http", False)], ids=["https", "http"]
)
def test_the_last_scheme_a_trusted_proxy_reports_counts(make_app, proto: str, hsts: bool) -> None:
    client = make_app(FORWARDED_ALLOW_IPS=PROXY).test_client()
    response = client.get("/healthz", **via(PROXY, **{"X-Forwarded-Proto": proto}))
    assert ("Strict-Transport-Security" in response.headers) is hsts


def test_a_trusted_proxy_that_took_plain_http_makes_the_request_plain(make_app, keys: KeySet) -> None:
    """Even on the service's own TLS socket: the hop before the proxy carried the key in cleartext."""
    client = make_app(APP_ENV="production", FORWARDED_ALLOW_IPS=PROXY).test_client()
    sent = via(PROXY, **{"X-Forwarded-Proto": "http", **bearer(keys.reader)})
    assert client.get("/v1/whoami", base_url="https://localhost", **sent).status_code == 403


@pytest.mark.parametrize(
    ("hop", "seen"),
    [
        ("198.51.100.7:43210", "198.51.100.7"),
        ("[2001:db8::7]:443", "2001:db8::7"),
        ("2001:db8::7", "2001:db8::7"),
        ("[2001:db8::7]", "2001:db8::7"),
    ],
)
def test_a_hop_with_a_port_counts_as_its_address(
    make_app, caplog: pytest.LogCaptureFixture, hop: str, seen: str
) -> None:
    client = make_app(FORWARDED_ALLOW_IPS=PROXY).test_client()
    with caplog.at_level(logging.INFO):
        assert client.get("/healthz", **via(PROXY, **{"X-Forwarded-For": hop})).status_code == 200
    (line,) = [record for record in caplog.records if record.name.endswith("requestlog")]
    assert line.remote_addr == seen


@pytest.mark.parametrize(
    "hop", ["unknown", "proxy.internal", "198.51.100.7:1:2", "[::1", "a" * 300, "_hidden"]
)
def test_a_hop_that_is_not_an_address_is_refused_not_given_a_budget(make_app, hop: str) -> None:
    """Each distinct text would be a client with a fresh budget of its own: ports that change on
    every connection, or text the proxy passed on."""
    client = make_app(FORWARDED_ALLOW_IPS=PROXY, RATELIMIT_AUTH_FAILURES="1 per hour").test_client()
    for n in range(3):
        response = client.get("/v1/whoami", **via(PROXY, **{"X-Forwarded-For": f"{hop}{n}"}))
        assert response.status_code == 400
        assert response.content_type == "application/problem+json"
        assert hop not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "hop", ["[2001:db8::1]x", "[2001:db8::1]]:443", "[2001:db8::1]:", "[2001:db8::1]:44a"]
)
def test_a_bracketed_hop_followed_by_anything_but_a_port_is_unreadable(hop: str) -> None:
    assert client_address(hop) is None


@pytest.mark.parametrize(
    ("hop", "address"), [("[2001:db8::1]", "2001:db8::1"), ("[2001:db8::1]:443", "2001:db8::1")]
)
def test_a_bracketed_hop_with_or_without_a_port_is_its_address(hop: str, address: str) -> None:
    assert client_address(hop) == address
